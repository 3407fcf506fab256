"""Gin at the edges: the one place that registers configurables and parses gin files.

Importing this module registers every configurable (model builder, input config, synthetic
dataset, schedule, optimizer, weight decay, init mode, train config, pre-training config,
study config). A mistake in the gin files or bindings (an unknown or misspelled name, with
the nearest valid ones; a missing file; an undefined macro; a syntax error) is a ConfigError
raised here, before any model is built.
"""

import difflib
import inspect
import os
import re
from typing import Dict, Sequence

import gin

from rethink_tf.checkpoint import init  # noqa: F401

# Imported for their gin registrations (training.schedules comes with training.optimizer).
from rethink_tf.data import input_pipeline, synthetic  # noqa: F401
from rethink_tf.errors import ConfigError  # noqa: F401 (raised here, caught by callers)
from rethink_tf.evaluation import tta  # noqa: F401
from rethink_tf.modeling import build  # noqa: F401
from rethink_tf.training import optimizer, pretraining, study_plan, train_config  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _registered() -> Dict[str, object]:
  """Registered configurables by name (gin keeps them in a private registry)."""
  registry = getattr(gin.config, "_REGISTRY", None)
  if registry is None or not hasattr(registry, "items"):
    return {}
  return {selector.split(".")[-1]: configurable for selector, configurable in registry.items()}


def _suggestion(error: str) -> str:
  """' (did you mean ...?)' for a misspelled configurable or parameter, else ''."""
  configurables = _registered()
  m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", error)
  if m and m.group(1).split(".")[-1] in configurables:
    fn = getattr(configurables[m.group(1).split(".")[-1]], "wrapped", None)
    params = list(inspect.signature(fn).parameters) if fn else []
    close = difflib.get_close_matches(m.group(2), params, n=3)
    return f" (did you mean {', '.join(f'{m.group(1)}.{c}' for c in close)}?)" if close else ""
  m = re.search(r"No configurable matching '([\w./]+)'", error)
  if m:
    close = difflib.get_close_matches(m.group(1).split("/")[-1], list(configurables), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""
  return ""


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str] = (), finalize: bool = True):
  """Parses gin files (paths relative to the working directory or the repository) and params.

  Raises a ConfigError naming the file, or the binding and where it is, with the nearest
  valid names for a misspelled one.
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
      raise ConfigError(f"gin file {f!r} not found (looked in {os.getcwd()} and {REPO_ROOT})")
  try:
    gin.parse_config_files_and_bindings(resolved, list(gin_params), finalize_config=finalize)
  except (OSError, ValueError, SyntaxError) as e:
    text = str(e)
    macro = re.match(r"No bindings specified for '([\w./]+)/gin.macro'", text)
    if macro:  # gin appends the whole config to this one
      text = f"the macro %{macro.group(1)} is used but never bound"
    if isinstance(e, SyntaxError) and e.text:
      text += f"\n    {e.text.strip()}"
    required = re.match(r"([\w./]+) set to `%gin.REQUIRED` but not subsequently overridden", text)
    if required:  # e.g. the pretrained checkpoint of init/pretrained.gin
      text = (f"{required.group(1)} must be given (the gin files mark it %gin.REQUIRED): "
              f"--gin_param=\"{required.group(1)} = '...'\"")
    lines = text.strip().splitlines()
    head = lines[0].rstrip(".") + _suggestion(text)
    raise ConfigError("\n".join([f"gin: {head}"] + lines[1:])) from e
