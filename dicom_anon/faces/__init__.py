"""Face de-identification: find faces, keep the clinical area exactly, replace the identity.

The entry point is ``dicom_anon.faces.pipeline.process_photo``; docs/faces.md describes the
pipeline, its settings, its refusal codes and its evaluation.
"""
