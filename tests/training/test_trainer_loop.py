"""The generic training loop with a toy task (no detector): hook order, restore before the
hooks, loop calls bounded by the hooks' events, preemption, resume and error routing."""

import os
import signal

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from rethink_tf.training import distribute
from rethink_tf.training import hooks as hooks_lib
from rethink_tf.training.trainer import Trainer


class ToyTask:
  """Fits y = 3x with one weight; batch i holds the example index i (the stream a resumed run
  must continue). `fail_at`: the step that raises an unreadable-record error."""

  def __init__(self, total_steps=10, fail_at=None):
    self.strategy = distribute.get_strategy("one_device")
    with self.strategy.scope():
      self.model = tf_keras.Sequential([tf_keras.layers.Dense(1, use_bias=False)])
      self.model(tf.zeros([1, 1]))
      self.optimizer = tf_keras.optimizers.SGD(0.01)
      self.optimizer.build(self.model.trainable_variables)
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
    self.steps_in_call = tf.Variable(0, trainable=False)
    self.total_steps, self.global_batch_size = total_steps, 1
    self.loss_keys = ["loss"]
    self.fail_at = fail_at
    self.seen = []  # the example index of every step run

  def learning_rate(self, step):
    return 0.01

  def describe(self):
    return "toy: y = 3x"

  def run_record(self):
    return None

  def restore_or_initialize(self, model_dir):
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
    return int(self.optimizer.iterations.numpy())

  def dataset(self, start_step=0):
    return tf.data.Dataset.range(start_step, 10**6)

  def train_function(self):

    @tf.function
    def step(i):
      x = tf.cast(tf.reshape(i % 5 + 1, [1, 1]), tf.float32)
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean((self.model(x) - 3.0 * x)**2)
      grads = tape.gradient(loss, self.model.trainable_variables)
      self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
      return loss

    def loop(iterator, num_steps):
      self.steps_in_call.assign(0)
      loss = tf.constant(0.0)
      for done in range(int(num_steps)):
        i = next(iterator)
        if self.fail_at is not None and int(i) + 1 == self.fail_at:
          raise tf.errors.DataLossError(None, None, "corrupted record at 1234")
        loss = step(i)
        self.seen.append(int(i))
        self.steps_in_call.assign(done + 1)
      return {"loss": loss}, tf.constant(int(num_steps)), tf.constant(True)

    return loop


class Recorder(hooks_lib.Hook):
  """Appends (name, event, ...) to a shared log; an event every `every` steps."""

  def __init__(self, name, log, every=None, replace_errors=False):
    self.name, self.log, self.every, self.replace_errors = name, log, every, replace_errors

  def before_train(self):
    self.log.append((self.name, "before_train", self.trainer.start_step))

  def steps_to_next(self, step):
    return self.every - step % self.every if self.every else None

  def after_step(self, step, result):
    self.log.append((self.name, "after_step", step, result.done))

  def after_train(self):
    self.log.append((self.name, "after_train"))

  def on_error(self, step, error):
    self.log.append((self.name, "on_error", step, type(error).__name__))
    if self.replace_errors and isinstance(error, tf.errors.DataLossError):
      return RuntimeError(f"record unreadable after step {step}")
    return None


class SigtermAt(hooks_lib.Hook):
  """Sends this process a SIGTERM once the loop reaches `step`."""

  def __init__(self, step):
    self.step = step

  def after_step(self, step, result):
    if step == self.step:
      os.kill(os.getpid(), signal.SIGTERM)


def _events(log, name):
  return [e for e in log if e[0] == name]


def test_hooks_run_in_the_given_order_and_see_the_restored_step(tmp_path):
  model_dir = str(tmp_path)
  first = Trainer(ToyTask(), [hooks_lib.Checkpointer(3, keep=2)], model_dir, stop_at_step=6)
  first.train()
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-6")

  log = []
  task = ToyTask()
  hooks = [Recorder("a", log), Recorder("b", log), hooks_lib.Checkpointer(3, keep=2)]
  trainer = Trainer(task, hooks, model_dir, steps_per_loop=2)
  trainer.train()
  # Restored before any hook ran: both see step 6; then every event reaches a before b.
  assert log[:2] == [("a", "before_train", 6), ("b", "before_train", 6)]
  assert [e[1:] for e in log[2::2]] == [e[1:] for e in log[3::2]]
  assert [e[0] for e in log[2:]] == ["a", "b"] * ((len(log) - 2) // 2)
  # Calls of at most 2 steps, none past the checkpointer's step 9.
  assert [e[2] for e in _events(log, "a") if e[1] == "after_step"] == [8, 9, 10]
  assert log[-2:] == [("a", "after_train"), ("b", "after_train")]
  assert trainer.completed and task.seen == [6, 7, 8, 9]  # the stream continued at step 6


def test_the_hooks_events_bound_each_loop_call(tmp_path):
  log = []
  hooks = [Recorder("every3", log, every=3), Recorder("every4", log, every=4)]
  Trainer(ToyTask(total_steps=13), hooks, str(tmp_path), steps_per_loop=5).train()
  reached = [(e[2], e[3]) for e in _events(log, "every3") if e[1] == "after_step"]
  # No call runs past an event of either hook (3, 4, 6, 8, 9, 12) or the end (13).
  assert reached == [(3, 3), (4, 1), (6, 2), (8, 2), (9, 1), (12, 3), (13, 1)]


def test_sigterm_saves_at_the_step_reached_stops_and_the_next_run_resumes_there(tmp_path):
  model_dir = str(tmp_path)
  log = []
  hooks = [SigtermAt(4), hooks_lib.Checkpointer(100, keep=2), Recorder("after", log)]
  task = ToyTask()
  trainer = Trainer(task, hooks, model_dir)
  previous = signal.getsignal(signal.SIGTERM)
  assert trainer.train() is None
  assert trainer.preempted and not trainer.completed
  assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
  # The run stopped right after the save: the hook after the checkpointer never saw step 4.
  assert [e[2] for e in log if e[1] == "after_step"] == [1, 2, 3]
  weight = task.model.get_weights()[0]

  resumed_task = ToyTask()
  resumed = Trainer(resumed_task, [hooks_lib.Checkpointer(100, keep=2)], model_dir)
  assert resumed.restore_or_initialize() == 4
  np.testing.assert_array_equal(resumed_task.model.get_weights()[0], weight)
  resumed.train()
  assert resumed.completed and resumed_task.seen == [4, 5, 6, 7, 8, 9]


def test_errors_go_to_the_hooks_and_the_first_replacement_is_raised(tmp_path):
  log = []
  hooks = [Recorder("a", log), Recorder("b", log, replace_errors=True), Recorder("c", log)]
  task = ToyTask(fail_at=7)
  with pytest.raises(RuntimeError, match="record unreadable after step 6"):
    Trainer(task, hooks, str(tmp_path), steps_per_loop=4).train()
  # The call of steps 5-8 failed at step 7: the last completed step is 6.
  errors = [e for e in log if e[1] == "on_error"]
  assert errors == [("a", "on_error", 6, "DataLossError"), ("b", "on_error", 6, "DataLossError")]
  assert log[-3:] == [("a", "after_train"), ("b", "after_train"), ("c", "after_train")]

  class Fails(hooks_lib.Hook):

    def after_step(self, step, result):
      if step == 2:
        raise ValueError("a hook failed")

  log.clear()
  with pytest.raises(ValueError, match="a hook failed"):  # no replacement: the error itself
    Trainer(ToyTask(), [Fails(), Recorder("a", log)], str(tmp_path / "2")).train()
  assert ("a", "on_error", 2, "ValueError") in log
