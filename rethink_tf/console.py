"""How the command-line programs show the library's log lines.

Library modules log through absl logging and print nothing; a program (a module with a
`console_main`) calls `show_library_logs()` in its `main`: their INFO lines (progress, results,
what was restored or skipped) then appear as plain lines on stdout, as a user reads them, unless
absl's `--verbosity` / `-v` flag sets another level (`-v -1` keeps warnings only). Other
packages' INFO lines (TensorFlow logs some through absl too) and TensorFlow's own Python log
lines below ERROR stay out.
"""

import logging as std_logging
import os
import sys

from absl import flags, logging


def show_library_logs():
  handler = logging.get_absl_handler().python_handler
  handler.stream = sys.stdout
  handler.setFormatter(std_logging.Formatter("%(message)s"))
  handler.addFilter(_ours_or_warning)
  if not (flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present):
    logging.set_verbosity(logging.INFO)
  std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


def _ours_or_warning(record: std_logging.LogRecord) -> bool:
  package = f"{os.sep}rethink_tf{os.sep}"
  return record.levelno >= std_logging.WARNING or package in record.pathname
