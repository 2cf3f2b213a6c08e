"""Training the area-preserving encoder the gan backend inverts with (docs/gan.md): losses, the
resumable training loop, and the face sets it learns from (photos, or the generator's own samples)."""
