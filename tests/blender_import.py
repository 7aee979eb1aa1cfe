"""Run inside Blender (`blender -b --factory-startup --python tests/blender_import.py -- MESH.obj MESH.glb OUT.json`):
imports the textured OBJ and the GLB with Blender's own importers and writes what Blender made of them."""

import json
import sys

import bpy
import numpy

# Debian's Blender 3.4 glTF add-on still says np.bool, which Debian's numpy 1.24 no longer has.
if not hasattr(numpy, "bool"):
    numpy.bool = bool

obj_path, glb_path, out_path = sys.argv[sys.argv.index("--") + 1 :]


def images(material) -> list:
    """(name, width, height) of the image textures feeding a material's node tree."""
    if material is None or not material.use_nodes:
        return []
    return [(n.image.name, *n.image.size) for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image]


report = {}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.obj_import(filepath=obj_path)
(obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
report["obj"] = {"vertices": len(obj.data.vertices), "faces": len(obj.data.polygons),
                 "uv_layers": len(obj.data.uv_layers), "images": images(obj.active_material)}

bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=glb_path)
(head,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
keys = head.data.shape_keys.key_blocks if head.data.shape_keys else []
report["glb"] = {"vertices": len(head.data.vertices), "uv_layers": len(head.data.uv_layers),
                 "images": images(head.active_material),
                 "shape_keys": {k.name: k.value for k in keys if k.name != "Basis"},
                 "height_m": head.dimensions.z if head.dimensions.z > head.dimensions.y else head.dimensions.y}
with open(out_path, "w") as f:
    json.dump(report, f)
