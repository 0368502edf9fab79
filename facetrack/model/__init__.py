"""FaceTrack-MM: CLIP vision tower, STC connector, face branch and causal LM; checkpoint loading and saving.

Submodules import torch and transformers; this package's ``__init__`` stays light so that
``facetrack.model.prompt`` (instruction templates and chat formatting) can be imported without them.
"""
