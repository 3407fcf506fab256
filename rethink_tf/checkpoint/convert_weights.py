r"""Converts public ImageNet ResNet/ResNeXt/VGG-16 weights into a checkpoint for `pretrained`.

  python -m rethink_tf.checkpoint.convert_weights --format=torchvision|detectron|keras \
      --input=PATH --output=CKPT_PREFIX --depth=50 [--groups=32 --width_per_group=8] \
      --norm=GN|BN|FrozenBN [--check_input=X.npy --check_output=FEATS.npz]
  python -m rethink_tf.checkpoint.convert_weights --arch=vgg16 --norm=None \
      --format=torchvision|detectron --input=PATH --output=CKPT_PREFIX

VGG-16 checkpoints hold the conv body and fc6/fc7 (the original Faster R-CNN's RoI head,
restored into the 2fc box head); --check_output then holds `conv5_3`.

Writes `CKPT_PREFIX` (a TF checkpoint of the backbone, restored by init mode `pretrained`) and
`CKPT_PREFIX.json` (the source's pixel convention: channel order, mean, std; the trainer applies
it to the input pipeline, so converted weights see the inputs they were trained on). Every
backbone variable must be matched, and every source weight used (the classifier aside);
otherwise the error lists the names. With --check_input (an NHWC float32 batch, fed as is)
the converted backbone's stem output and C2-C5 are written to --check_output (keys c1_pool,
c2, c3, c4, c5; NHWC float32) for comparison with the source framework.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from rethink_tf import console  # noqa: E402
from rethink_tf.checkpoint import init as init_lib  # noqa: E402
from rethink_tf.checkpoint import weight_import  # noqa: E402
from rethink_tf.modeling.backbone.resnet import ResNet  # noqa: E402
from rethink_tf.modeling.backbone.vgg import VGG16  # noqa: E402
from rethink_tf.modeling.roi_heads.box import BoxHead  # noqa: E402

# Pixel conventions of each source (0-255 inputs).
CONVENTIONS = {
    "torchvision": {
        "channel_order": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375]
    },
    "detectron": {
        "channel_order": "BGR", "pixel_mean": [102.9801, 115.9465, 122.7717],
        "pixel_std": [1.0, 1.0, 1.0]
    },
}
FEATURE_KEYS = {"c1_pool": 1, "c2": 2, "c3": 3, "c4": 4, "c5": 5}


class ConversionError(ValueError):
  pass


def convert(fmt: str,
            input_path: str,
            output: str,
            depth: int = 50,
            groups: int = 1,
            width_per_group: int = 64,
            norm: str = "GN",
            stride_in_1x1: bool = False,
            arch: str = "resnet",
            width_multiplier: float = 1.0,
            fc_dim: int = 4096):
  """Converts and writes the checkpoint and its convention file; returns the backbone.

  `width_multiplier` and `fc_dim` shrink VGG-16 for tests (1.0 and 4096 are the real one).
  """
  if fmt == "keras":
    raise ConversionError(
        "Keras Applications .h5 weights are not read: their layer names follow Keras' own "
        "graph (conv2_block1_1_conv, ...) and their ResNet v1 layout needs "
        "build_model.stride_in_1x1 = True. Convert them to a torchvision-layout .npz or "
        ".safetensors (same shapes, OIHW kernels) and use --format=torchvision "
        "--stride_in_1x1.")
  if fmt not in CONVENTIONS:
    raise ConversionError(f"--format={fmt!r} is not one of torchvision, detectron, keras")
  if arch == "vgg16":
    return _convert_vgg16(fmt, input_path, output, norm, width_multiplier, fc_dim)
  if arch != "resnet":
    raise ConversionError(f"--arch={arch!r} is not one of resnet, vgg16")
  backbone = ResNet(depth=depth,
                    groups=groups,
                    width_per_group=width_per_group,
                    norm=norm,
                    stride_in_1x1=stride_in_1x1,
                    name="backbone")
  backbone(tf.zeros([1, 64, 64, 3]))
  try:
    if fmt == "torchvision":
      unused = weight_import.assign_torchvision(backbone, weight_import.load_state_dict(input_path))
    else:
      unused = weight_import.assign_detectron(backbone, weight_import.load_pickle_blobs(input_path))
  except KeyError as e:
    raise ConversionError(f"{input_path} has no weight {e.args[0]!r} needed by a depth-{depth} "
                          f"{'ResNeXt' if groups > 1 else 'ResNet'} backbone with norm {norm} "
                          "(wrong --depth, --groups or --norm?)") from None
  except ValueError as e:
    raise ConversionError(f"{input_path}: {e}") from None
  if unused:
    raise ConversionError(f"{input_path}: {len(unused)} weights matched no backbone variable: "
                          f"{unused[:20]}")
  init_lib.save_backbone(backbone, output)
  with open(output + ".json", "w") as f:
    json.dump(
        {
            "source_format": fmt, "source": os.path.abspath(input_path), "depth": depth,
            "groups": groups, "width_per_group": width_per_group, "norm": norm,
            "stride_in_1x1": stride_in_1x1, **CONVENTIONS[fmt]
        },
        f,
        indent=1)
  return backbone


def _convert_vgg16(fmt, input_path, output, norm, width_multiplier, fc_dim):
  if norm not in (None, "None"):
    raise ConversionError(f"VGG-16 has no normalization layers: pass --norm=None, not {norm}")
  backbone = VGG16(width_multiplier=width_multiplier, name="backbone")
  backbone(tf.zeros([1, 32, 32, 3]))
  channels = backbone.out_channels[max(backbone.out_channels)]
  box_head = BoxHead("2fc", fc_dim=fc_dim, norm=None, name="box_head")
  box_head(tf.zeros([1, 1, 7, 7, channels]))
  weights = (weight_import.load_state_dict(input_path)
             if fmt == "torchvision" else weight_import.load_pickle_blobs(input_path))
  try:
    unused = weight_import.assign_vgg16(backbone, box_head, weights, fmt)
  except KeyError as e:
    raise ConversionError(f"{input_path} has no weight {e.args[0]!r} needed by VGG-16 "
                          f"({fmt} layout expected)") from None
  except ValueError as e:
    raise ConversionError(f"{input_path}: {e}") from None
  if unused:
    raise ConversionError(f"{input_path}: {len(unused)} weights matched no VGG-16 variable: "
                          f"{unused[:20]}")
  init_lib.save_backbone(backbone, output, box_head=box_head)
  with open(output + ".json", "w") as f:
    json.dump(
        {
            "source_format": fmt, "source": os.path.abspath(input_path), "arch": "vgg16",
            "norm": None, "stride_in_1x1": False, **CONVENTIONS[fmt]
        },
        f,
        indent=1)
  return backbone


def backbone_features(backbone, images_nhwc: np.ndarray) -> dict:
  """{c1_pool, c2..c5} of a ResNet, or {conv5_3} of VGG-16, as NHWC float32 arrays."""
  out = backbone(tf.constant(images_nhwc, tf.float32), training=False)
  if isinstance(backbone, VGG16):
    return {"conv5_3": out[max(out)].numpy()}
  return {k: out[level].numpy() for k, level in FEATURE_KEYS.items()}


FLAGS = flags.FLAGS


def main(argv):
  console.show_library_logs()
  del argv
  backbone = convert(FLAGS.format, FLAGS.input, FLAGS.output, FLAGS.depth, FLAGS.groups,
                     FLAGS.width_per_group, FLAGS.norm, FLAGS.stride_in_1x1, FLAGS.arch)
  print(f"wrote {FLAGS.output} ({len(backbone.variables)} variables) and {FLAGS.output}.json")
  if FLAGS.check_input:
    feats = backbone_features(backbone, np.load(FLAGS.check_input, allow_pickle=False))
    np.savez(FLAGS.check_output, **feats)
    print(f"wrote {', '.join(feats)} to {FLAGS.check_output}")


def console_main():
  """Defines the flags and runs `main` (installed as `rethink-tf-convert-weights`)."""
  flags.DEFINE_enum("format", None, ["torchvision", "detectron", "keras"], "Source layout.")
  flags.DEFINE_string("input", None, "Weight file (.npz/.safetensors/.pth or Detectron .pkl).")
  flags.DEFINE_string("output", None, "Output checkpoint prefix.")
  flags.DEFINE_integer("depth", 50, "ResNet depth: 50, 101 or 152.")
  flags.DEFINE_integer("groups", 1, "ResNeXt groups (32 for 32x8d).")
  flags.DEFINE_integer("width_per_group", 64, "ResNeXt width per group (8 for 32x8d).")
  flags.DEFINE_enum("arch", "resnet", ["resnet", "vgg16"], "Backbone family.")
  flags.DEFINE_enum("norm", "GN", ["GN", "BN", "SyncBN", "FrozenBN", "None"],
                    "Backbone norm (None for VGG-16).")
  flags.DEFINE_bool(
      "stride_in_1x1", False, "ResNet v1 layout (MSRA R-50.pkl, Keras): the "
      "stride in the first 1x1 conv; the model must bind "
      "build_model.stride_in_1x1 = True to match.")
  flags.DEFINE_string("check_input", None, "NHWC float32 .npy batch to run the backbone on.")
  flags.DEFINE_string("check_output", "features.npz", "Where --check_input's features go.")
  flags.mark_flags_as_required(["format", "input", "output"])
  app.run(main)


if __name__ == "__main__":
  console_main()
