"""Face perception: detection (BlazeFace), the 468-point face mesh, and its iBUG-68 / part views."""

from fit3dmm.perception.detector import Detection, FaceDetector
from fit3dmm.perception.landmarks import MESH_PARTS, FaceMeshPredictor, to_ibug68

__all__ = ["MESH_PARTS", "Detection", "FaceDetector", "FaceMeshPredictor", "to_ibug68"]
