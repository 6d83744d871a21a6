"""MM-LG against what a user would pick instead, at the same family FLOPs, with descendants narrower than the
ancestry (the width-gap protocol): `python -m benchmarks.learngene.run`.

Modules: `budget` (every size and compute point), `family` (the nine narrow shapes), `data` (the fixed pools,
the in-vocabulary text task), `methods` (the ways to make a member, their objectives), `pretraining` (one
member's run), `teacher` (the ancestry's cached embeddings), `tasks` (downstream tasks and the curve score),
`costs` (compute matching, storage), `bench` (the units), `plan` (phases and shards), `run` (the phases),
`verdicts` (one per claim, `clipforge.stats`), `report` (tables, plots), `sizing` (the step-time probe and the
wall-time arithmetic), `same_width_report` (the earlier protocol's report, the negative control), `step0` and
`constructions` (what a fresh learngene is worth; select vs project).
"""
