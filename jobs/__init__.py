"""Ray entry points of facetrack: the only package that imports ``ray``."""
