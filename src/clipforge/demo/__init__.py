"""The demo: the whole clipforge story on built-in data (`clipforge demo`).

`pipeline` (phases, resumable, with an ETA), `measure` (one record per model of any kind),
`report` (report.md + self-contained report.html with tables and plots).
"""
