r"""Converts a trained detectron2 or Detectron Mask R-CNN into a checkpoint of this project.

  python -m rethink_tf.checkpoint.convert_detector --format=detectron2|detectron \
      --input=model_final.pkl [--config=config.yaml] [--categories=instances.json] --output=DIR

Writes, all at once (nothing is left in DIR when the conversion fails):
  DIR/ckpt-1          a TF checkpoint of the whole detector (backbone, FPN, RPN, box head and
                      predictor, mask head and predictor, cascade stages and keypoint head when
                      present), restored by `rethink_tf.evaluate --checkpoint=DIR`
  DIR/model.gin       the architecture, preprocessing and test-time settings read from the
                      source config (or the framework's defaults and the weights, without one)
  DIR/categories.json the classes in the model's order with their dataset ids and names

Then, with a data gin file for the dataset to evaluate on:
  python -m rethink_tf.evaluate --gin_file=DIR/model.gin --gin_file=gin_configs/data/coco.gin \
      --checkpoint=DIR
  python -m export.export_saved_model --gin_file=DIR/model.gin --checkpoint=DIR \
      --export_dir=exported/NAME

detectron2 numbers its classes 0..K-1 in the order of the dataset's sorted category ids
(COCO's 80 unless --categories gives the training annotations); Detectron the same, after its
background class 0. The names and layouts mapped: `checkpoint/detector_import.py`; the
conventions each binding in model.gin carries: docs/architecture.md.
"""

import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import (
    config,  # noqa: E402
    console,  # noqa: E402
)
from rethink_tf.checkpoint import detector_configs, detector_import, detector_specs  # noqa: E402
from rethink_tf.data import categories as categories_lib  # noqa: E402
from rethink_tf.modeling.build import build_model  # noqa: E402

MODEL_GIN = "model.gin"
CATEGORIES_FILE = categories_lib.CHECKPOINT_CATEGORIES


class ConversionError(ValueError):
  """A conversion that cannot be done; the message is one line naming the file and the key or
  tensor."""


def class_categories(num_classes: int, categories_path=None):
  """[(dataset id, name)] of the K foreground classes in contiguous order."""
  if categories_path:
    names = categories_lib.read_label_map(categories_path)
    source = categories_path
  else:
    names = categories_lib.COCO_CATEGORY_NAMES
    source = "COCO's 80 categories (the default)"
  if len(names) != num_classes:
    raise ConversionError(f"the model has {num_classes} classes but {source} has {len(names)} "
                          "categories: pass the annotations it was trained with as --categories")
  return [(i, names[i]) for i in sorted(names)]


def gin_text(spec: detector_configs.DetectorSpec, category_ids, header: str) -> str:
  """model.gin: build_model and InputConfig bindings, one per line."""

  def value(v):
    if isinstance(v, (list, tuple)):
      return "(" + ", ".join(value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)

  lines = [header, ""]
  lines += [f"build_model.{k} = {value(v)}" for k, v in spec.model.items()]
  lines.append("")
  lines += [f"InputConfig.{k} = {value(v)}" for k, v in spec.inputs.items()]
  lines.append(f"InputConfig.category_ids = {value(list(category_ids))}")
  return "\n".join(lines) + "\n"


def convert(fmt: str, input_path: str, output: str, config_path=None, categories_path=None):
  """Converts and writes `output`; returns (checkpoint prefix, number of source tensors, the
  converted model)."""
  if fmt not in detector_configs.FORMATS:
    raise ConversionError(f"--format={fmt!r} is not one of {detector_configs.FORMATS}")
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise ConversionError(f"{output} exists and is not an empty directory: conversions never "
                          "overwrite")
  tensors = detector_import.read_weights(input_path)
  if config_path:
    cfg = detector_configs.read_config(config_path, fmt)
  else:
    cfg = detector_configs.default_config(fmt, tensors)
    if fmt == "detectron2":  # older pkls carry their pixel convention as buffers
      for key, name in (("PIXEL_MEAN", "pixel_mean"), ("PIXEL_STD", "pixel_std")):
        if name in tensors:
          cfg["MODEL"][key] = [float(v) for v in tensors[name].reshape(-1)]
  where = config_path or f"{input_path} (no --config: {fmt} defaults)"
  make_spec = (detector_specs.detectron2_spec
               if fmt == "detectron2" else detector_specs.detectron_spec)
  spec = make_spec(cfg, tensors, where)
  classes = class_categories(spec.num_classes, categories_path)
  header = (f"# {fmt} detector converted by rethink_tf.checkpoint.convert_detector from "
            f"{os.path.basename(input_path)}" +
            (f" ({os.path.basename(config_path)})" if config_path else "") +
            "\n# Evaluate: python -m rethink_tf.evaluate --gin_file=THIS_FILE "
            "--gin_file=<data gin> --checkpoint=THIS_DIR")
  text = gin_text(spec, [c for c, _ in classes], header)

  partial = f"{output.rstrip(os.sep)}.partial-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    gin_path = os.path.join(partial, MODEL_GIN)
    with open(gin_path, "w") as f:
      f.write(text)
    config.parse_gin([gin_path])
    size = tuple(spec.inputs["padded_size"])
    model = build_model(num_classes=spec.num_classes + 1, image_size=size)
    model.detect(tf.zeros([1, *size, 3]), tf.constant([size], tf.float32))
    detector_import.assign(model, tensors, fmt, spec.block_counts, input_path)
    detector_import.check_finite(model, input_path)
    tf.train.Checkpoint(model=model).save(os.path.join(partial, "ckpt"))
    with open(os.path.join(partial, CATEGORIES_FILE), "w") as f:
      json.dump(
          {
              "source": {
                  "format": fmt, "weights": os.path.basename(input_path),
                  "config": os.path.basename(config_path) if config_path else None
              }, "categories": [{"id": int(i), "name": n, "contiguous_id": k + 1}
                                for k, (i, n) in enumerate(classes)]
          },
          f,
          indent=1)
    if os.path.isdir(output):
      os.rmdir(output)  # empty (checked above)
    os.rename(partial, output)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return tf.train.latest_checkpoint(output), len(tensors), model


FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  try:
    prefix, count, model = convert(FLAGS.format, FLAGS.input, FLAGS.output, FLAGS.config,
                                   FLAGS.categories)
  except (ConversionError, detector_configs.SpecError, detector_import.ImportError_,
          config.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  params = sum(int(tf.size(v)) for v in model.trainable_variables)
  print(f"converted {count} tensors of {FLAGS.input} into {len(model.variables)} variables "
        f"({params:,} parameters): {prefix}, {os.path.join(FLAGS.output, MODEL_GIN)}, "
        f"{os.path.join(FLAGS.output, CATEGORIES_FILE)}")


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-convert-detector`)."""
  flags.DEFINE_enum("format", None, list(detector_configs.FORMATS), "Source framework.")
  flags.DEFINE_string("input", None, "model_final.pkl (detectron2 or Detectron) or a "
                      "detectron2 .pth.")
  flags.DEFINE_string(
      "config", None, "The source's config yaml (detectron2: config.yaml or "
      "a model-zoo config with its _BASE_ files beside it).")
  flags.DEFINE_string("categories", None, "COCO annotations JSON of the training classes "
                      "(default: COCO's 80).")
  flags.DEFINE_string("output", None, "Output directory (new or empty).")
  flags.mark_flags_as_required(["format", "input", "output"])
  app.run(main)


if __name__ == "__main__":
  console_main()
