"""Gin at the edges: the one place that registers configurables and parses gin files.

Importing this module registers every configurable (model builder, input config, synthetic
dataset, schedule, optimizer, weight decay, init mode, train config, pre-training config, study config).
"""

import os
from typing import Sequence

import gin

# Imported for their gin registrations.
from rethink_tf.data import input_pipeline, synthetic  # noqa: F401
from rethink_tf.modeling import build, init  # noqa: F401
from rethink_tf.tools import study_plan  # noqa: F401
from rethink_tf.training import optimizer, pretraining, schedules, trainer  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str] = (), finalize: bool = True):
  """Parses gin files (paths relative to the working directory or the repository) and params.

  Raises a ValueError naming the file when one does not exist.
  """
  gin.clear_config()
  gin.add_config_file_search_path(REPO_ROOT)
  resolved = []
  for f in gin_files:
    if os.path.exists(f):
      resolved.append(f)
    elif os.path.exists(os.path.join(REPO_ROOT, f)):
      resolved.append(os.path.join(REPO_ROOT, f))
    else:
      raise ValueError(f"gin file {f!r} not found (looked in {os.getcwd()} and {REPO_ROOT})")
  gin.parse_config_files_and_bindings(resolved, list(gin_params), finalize_config=finalize)
