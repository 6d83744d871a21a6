"""MM-LG against what a user would pick instead, at the same family FLOPs: `python -m benchmarks.learngene.run`.

Modules: `budget` (every size and compute point), `data` (the fixed pools), `methods` (the ways to make a
descendant, the extraction recipes), `tasks` (downstream tasks and the curve score), `costs` (compute
matching, storage), `bench` (the units), `run` (the phases), `report` (verdicts, tables, plots), `step0`
(descendants of a fresh learngene, no training).
"""
