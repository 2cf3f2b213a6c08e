"""Face de-identification: find faces, keep the clinical area exactly, replace the identity.

The entry point is ``dicom_anon.faces.pipeline.process_photo``; docs/faces.md describes the
pipeline, its settings and its refusal codes. Only what the service runs lives here: evaluating,
building pools and training are the lab's (``dicom_anon.lab``, docs/research/README.md).
"""
