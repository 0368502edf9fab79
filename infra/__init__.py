"""Development infrastructure: a local S3-compatible server for facetrack."""
