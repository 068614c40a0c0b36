"""predict / recommend / views on a tiny hand-made store with known answers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from als_core.model import FactorModel
from als_core.pipeline.ingest import ingest_table
from als_core.pipeline.models import bootstrap_model, create_model
from als_core.sgd import SGDParams
from als_core.sql_session import sql_session


@pytest.fixture
def tiny(warehouse):
    """μ = 3; users 1, 2; items 10, 20, 30 with known biases and 2-d vectors. User 1 rated item 10."""
    create_model(warehouse, "tiny", SGDParams(rank=2))
    model = FactorModel(
        mu=3.0, n_ratings=4,
        user_ids=np.array([1, 2]), user_bias=np.array([0.5, -0.5]), user_factors=np.array([[1.0, 0.0], [0.0, 1.0]]),
        item_ids=np.array([10, 20, 30]), item_bias=np.array([0.25, 0.0, -0.25]),
        item_factors=np.array([[1.0, 1.0], [0.5, -1.0], [-0.5, 0.75]]),
        user_counts=np.array([2, 2]), item_counts=np.array([1, 2, 1]),
    )
    bootstrap_model(warehouse, "tiny", model, through_seq=None)
    ingest_table(warehouse, pa.table({"user_id": pa.array([1], pa.int64()), "item_id": pa.array([10], pa.int64()),
                                      "rating": [4.0], "rated_at": pa.array([1], pa.int64())}), source="seen", holdout=False)
    return warehouse


def test_predict_matches_the_hand_computation(tiny):
    with sql_session(tiny) as con:
        p = lambda u, i: con.execute("SELECT predict('tiny', ?, ?)", [u, i]).fetchone()[0]  # noqa: E731
        assert p(1, 20) == pytest.approx(3.0 + 0.5 + 0.0 + 0.5)
        assert p(2, 30) == pytest.approx(3.0 - 0.5 - 0.25 + 0.75)
        assert p(1, 10) == pytest.approx(4.75)  # 3 + .5 + .25 + 1
        assert p(99, 20) == pytest.approx(3.0)  # unknown user: μ + b_i
        assert p(2, 999) == pytest.approx(2.5)  # unknown item: μ + b_u


def test_recommend_excludes_rated_items_and_ranks_by_score(tiny):
    with sql_session(tiny) as con:
        rows = con.execute("SELECT item_id, score, cold_start FROM recommend('tiny', 1, top_n := 5)").fetchall()
    # user 1: item 20 -> 3 + .5 + 0 + .5 = 4.0; item 30 -> 3 + .5 - .25 - .5 = 2.75; item 10 rated
    assert [(r[0], round(r[1], 6), r[2]) for r in rows] == [(20, 4.0, False), (30, 2.75, False)]


def test_recommend_for_a_cold_start_user_ranks_by_item_bias(tiny):
    with sql_session(tiny) as con:
        rows = con.execute("SELECT item_id, score, cold_start FROM recommend('tiny', 12345, top_n := 2)").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(10, 3.25, True), (20, 3.0, True)]


def test_views_list_versions_and_current_factors(tiny):
    with sql_session(tiny) as con:
        versions = con.execute("SELECT model_id, version, ratings_seen, mu FROM model_versions").fetchall()
        assert versions == [("tiny", 1, 4, 3.0)]
        n = con.execute("SELECT count(*) FROM current_factors('tiny') WHERE side = 'item'").fetchone()[0]
        assert n == 3


def test_current_factors_refuses_a_version_older_than_the_last_compaction(tiny):
    """The macro reads the latest table: a version whose rows a compaction merged away would
    come back wrong, so it is refused, naming the way that time-travels."""
    import duckdb

    from als_core.engines.base import get_engine
    from als_core.pipeline.apply import apply_pending
    from als_core.store.versions import compact_factors, model_state

    engine = get_engine("duckdb")
    apply_pending(tiny, engine, evaluate_every=0, compact_every=0)  # the "seen" batch: version 2
    engine.close()
    compact_factors(tiny, "tiny", full=True)
    with sql_session(tiny) as con:
        with pytest.raises(duckdb.InvalidInputException, match=r"version 1 of model tiny is older than its last "
                                                                r"compaction \(version 2\).*model_state"):
            con.execute("SELECT * FROM current_factors('tiny', as_of := 1)").fetchall()
        at_2 = con.execute("SELECT count(*) FROM current_factors('tiny', as_of := 2)").fetchone()[0]
    assert at_2 == model_state(tiny, "tiny", 2).num_rows == 6  # 2 users, 3 items, the global row
    assert model_state(tiny, "tiny", 1).num_rows == 6  # Python time-travels to it


def test_predict_is_null_for_a_model_without_versions(warehouse):
    create_model(warehouse, "empty", SGDParams(rank=2))
    with sql_session(warehouse) as con:
        assert con.execute("SELECT predict('empty', 1, 1)").fetchone()[0] is None
