"""Area-preserving GAN inversion: a second identity-replacement backend.

A context face gets the patient's preserved area pasted in; an encoder trained with an extra
pixel loss on that area maps the merged image into a generator's latent space; the generator
draws a coherent face with the context identity and (approximately) the patient's area, and the
backend then copies the preserved pixels back exactly. See docs/gan.md.
"""
