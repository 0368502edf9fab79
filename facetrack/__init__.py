"""facetrack: facial-dynamics video captioning (FaceTrack-MM) as a library; Ray lives in ``jobs/``."""

__version__ = "0.1.0"
