"""A small trained workspace for the compress tests: 150 MovieLens-100K users and a dim-32 teacher."""

from __future__ import annotations

import pytest
import torch

from pipelines import config, measure, prune, split, train
from pipelines.io import write_parquet_tables
from pipelines.model import build_model, save_bundle
from tests.conftest import REPO

TRAIN_PARAMS = {"seed": 0, "batch_size": 64, "weight_decay": 0.0, "dropout": 0.0, "num_negatives": 64,
                "num_workers": 1, "cpus_per_worker": 1, "use_gpu": False, "ray_address": "", "max_failures": 0}
TEACHER_SHAPE = {"embedding_dim": 32, "history_length": 10}


@pytest.fixture(scope="session")
def small_workspace(movielens_tables, tmp_path_factory):
    """Workspace with ingested and split tables of 150 users and a briefly trained teacher.

    Returns (root, teacher, data, arrays): `data` is train.training_arrays' output and `arrays` the
    worker arrays of train.loop_config_from.
    """
    root = tmp_path_factory.mktemp("compress-workspace")
    users = movielens_tables["users"].head(150)
    interactions = movielens_tables["interactions"]
    interactions = interactions[interactions["user_id"].isin(users["user_id"])]
    tables = {"interactions": interactions, "items": movielens_tables["items"], "users": users}
    write_parquet_tables(tables, root / config.INGESTED_DIR)
    params = config.load_params(REPO / config.PARAMS_FILE)
    write_parquet_tables(split.split(interactions, params["split"]), root / config.SPLIT_DIR)

    data = train.training_arrays(train.load_split_tables(root))
    loop = train.loop_config_from({**TRAIN_PARAMS, **TEACHER_SHAPE, "epochs": 1, "learning_rate": 0.01}, data)
    torch.manual_seed(0)
    teacher = build_model(loop["model_config"], torch.tensor(loop["arrays"]["item_categories"]),
                          torch.tensor(loop["arrays"]["item_year_buckets"]))
    hparams = {**TRAIN_PARAMS, "learning_rate": 0.01}
    with measure.threads(1):
        prune.fine_tune(teacher, {}, loop["arrays"], hparams, steps=150, eval_every=50)
    catalog = data["catalog"]
    save_bundle(teacher, loop["model_config"], catalog.item_ids, catalog.user_ids,
                root / config.CANDIDATE_DIR / "model.pt")
    return root, teacher, data, loop["arrays"]
