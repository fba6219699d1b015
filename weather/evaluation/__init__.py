"""Evaluating forecasters on an archive: run them (`run`), report (`report`), draw (`plots`),
and the embedded main job (`demo`).

Imports run one way: `weather.evaluation` uses the forecasters (`weather.forecast`,
`weather.baselines`) and the scores (`weather.scoring`); nothing below imports it.
"""

from weather.evaluation.report import (
    HEADLINE,
    SCORECARD_REFERENCE,
    TABLE_LEADS_HOURS,
    ensemble_scores,
    goals_report,
    pooled_spread_skill,
    scorecard,
    scorecard_reference,
    scorecard_table,
    skill_table,
    target_label,
)
from weather.evaluation.run import (
    FORECASTERS,
    EvaluationConfig,
    check_settings,
    evaluate,
    finished_forecasts,
    forecasters_by_name,
    history_hours_needed,
    open_forecasts,
    run_forecaster,
    score,
    spaced_inits,
    write_report,
)

__all__ = [
    "FORECASTERS",
    "HEADLINE",
    "SCORECARD_REFERENCE",
    "TABLE_LEADS_HOURS",
    "EvaluationConfig",
    "check_settings",
    "ensemble_scores",
    "evaluate",
    "finished_forecasts",
    "forecasters_by_name",
    "goals_report",
    "history_hours_needed",
    "open_forecasts",
    "pooled_spread_skill",
    "run_forecaster",
    "score",
    "scorecard",
    "scorecard_reference",
    "scorecard_table",
    "skill_table",
    "spaced_inits",
    "target_label",
    "write_report",
]
