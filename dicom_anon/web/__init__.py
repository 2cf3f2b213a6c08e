"""The web console: the records officers', compliance reviewers' and operators' pages
(``dicom-anon console``), calling the same functions as the command line."""
