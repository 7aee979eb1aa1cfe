"""The learned face parser: aligned crop (align), network (network), inference (inference: FaceParser,
the ``parser`` segmenter) and training (train: ``fit3dmm parser train``)."""
