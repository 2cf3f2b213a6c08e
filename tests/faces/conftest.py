"""Fixtures for the face-pipeline tests (shared with tests/lab, so they live in facekit)."""

from facekit import face_a, face_b, lenient, portraits

__all__ = ["face_a", "face_b", "lenient", "portraits"]
