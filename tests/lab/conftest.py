"""Fixtures for the face-lab tests: the face tests' SFHQ faces and settings (facekit)."""

from facekit import face_a, face_b, lenient, portraits

__all__ = ["face_a", "face_b", "lenient", "portraits"]
