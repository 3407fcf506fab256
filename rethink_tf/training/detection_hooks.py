"""The detection task's own hooks: COCO evaluation during training."""

import json
import os
from typing import Dict

import tensorflow as tf
from absl import logging

from rethink_tf import run_files
from rethink_tf.evaluation import evaluator, visualize
from rethink_tf.training.hooks import Hook, steps_until

EVAL_METRICS_FILE = "eval_metrics.jsonl"


class Evaluation(Hook):
  """COCO evaluation on the host (chief only) every `every_steps` and at the schedule's end:
  TensorBoard scalars `bbox/AP`, ... and prediction images under `eval/`, a line in
  `eval_metrics.jsonl`, the metrics in `trainer.metrics`."""

  def __init__(self, every_steps: int, batch_size: int, image_summaries: int):
    self.every_steps, self.batch_size = every_steps, batch_size
    self.image_summaries = image_summaries

  def steps_to_next(self, step):
    return steps_until(step, self.every_steps)

  def after_step(self, step, result):
    t = self.trainer
    if t.is_chief and ((self.every_steps and step % self.every_steps == 0) or
                       step == t.task.total_steps):
      t.metrics = self.evaluate(step)

  def evaluate(self, step: int) -> Dict[str, Dict[str, float]]:
    t = self.trainer
    metrics = evaluator.run_evaluation(t.model, t.task.input_cfg, self.batch_size)
    writer = t.summary_writer("eval")
    with writer.as_default(step=step):
      for iou_type, stats in metrics.items():
        for k, v in stats.items():
          tf.summary.scalar(f"{iou_type}/{k}", v)
      if self.image_summaries:
        pictures = visualize.prediction_images(t.model, t.task.input_cfg, self.image_summaries)
        tf.summary.image("predictions", pictures, max_outputs=len(pictures))
    writer.flush()
    run_files.append_line(os.path.join(t.model_dir, EVAL_METRICS_FILE),
                          json.dumps({"step": step, **metrics}))
    logging.info(f"eval @ step {step}: {evaluator.format_metrics(metrics)}")
    return metrics
