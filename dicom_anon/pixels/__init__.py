"""Pixel data in and out: every photo encoding we accept becomes RGB uint8 frames, and back.

The face pipeline works on one representation only (``(frames, rows, columns, 3)``
uint8 RGB) so that "the preserved area is bit-identical" has one meaning; this
package owns the translation to and from the transfer syntaxes and photometric
interpretations that clinics send.
"""

from .codec import DecodedPixels, OutputEncoding, decode, encode

__all__ = ["DecodedPixels", "OutputEncoding", "decode", "encode"]
