"""Model selection: ``advise.advise`` ranks the registered models for a dataset and a goal from documented rules,
with no training; ``arena.arena`` trains every applicable model under one budget, scores each with the evaluation
protocol and writes a leaderboard, ``results.json`` and a self-contained ``report.html`` (``report``). The
functions are exported as ``genzoo.advise`` and ``genzoo.arena``; see docs/model-selection.md."""
