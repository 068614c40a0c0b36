"""Engine fixtures: one local Spark session for every Spark test of the run."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local SparkSession (2 cores, no UI), started once (4-7 s, more on a busy
    machine) and stopped at the end of the run. Skips when Java is missing."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java (17): none found")
    from als_core.engines.spark_engine import build_spark_session, ensure_checkpoint_dir

    session = build_spark_session("local[2]", conf={
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.memory": "1g",
    }, app_name="streaming-als-tests")
    session.sparkContext.setLogLevel("ERROR")
    ensure_checkpoint_dir(session, str(tmp_path_factory.mktemp("spark-checkpoints")))
    yield session
    session.stop()
