r"""docs/reliability.md: every bad input the tests try, what happens, and the test that shows it.

  python -m dev.reliability_table > docs/reliability.md
  python -m dev.reliability_table --check     # exit 1 if the page is stale

The converter's rows come from `coco_validation.PROBLEMS` (the rules the converter applies);
the others from `CASES`. Every row names a test, and `tests/dev/test_reliability_table.py`
checks that the test exists and that its module contains the row's evidence (the message or
name it asserts), and that the committed page equals this output.
"""

import dataclasses
import os
import sys
from typing import List

from absl import app, flags

from rethink_tf.data.coco_validation import PROBLEMS

DOC = os.path.join("docs", "reliability.md")
CONVERTER_TEST = ("tests/data/test_coco_validation.py::"
                  "test_every_planted_problem_is_counted_named_and_handled_by_its_rule")


@dataclasses.dataclass(frozen=True)
class Case:
  bad_input: str
  what_happens: str
  test: str  # "tests/path.py::test_name"
  evidence: str  # text the test module contains: the message or name it asserts


CASES = {
    "Data conversion (`python -m rethink_tf.data.coco_tfrecord`), whole files and modes": [
        Case("annotation file that is not JSON, has no `images` list or no `categories`",
             "ValueError naming the file and the defect; nothing written",
             "tests/data/test_coco_validation.py::test_a_bad_file_is_an_error_naming_it",
             "no `categories` list"),
        Case(
            "any record problem above, with `--strict`",
            "exit 1; stderr lists every problem record (`kind: record: detail`); no shard, "
            "temporary file or report left", "tests/data/test_coco_validation.py::"
            "test_strict_fails_naming_every_record_and_writes_nothing",
            "problem(s) with --strict; nothing was written"),
        Case(
            "random polygons (degenerate, odd-length, NaN/inf/1e12 coordinates), RLEs "
            "(wrong sums, negative runs, garbage strings, wrong sizes) and boxes "
            "(hypothesis, 300 examples)",
            "never crashes; every mask written equals pycocotools' decoding of what was "
            "kept (pycocotools itself is OOM-killed by a NaN or 1e12 polygon coordinate and "
            "decodes an invalid compressed RLE into uninitialized memory)",
            "tests/data/test_coco_validation.py::test_written_masks_equal_pycocotools_decoding",
            "_pycocotools_mask"),
        Case(
            "grayscale, CMYK, RGBA, palette and 16-bit images, GIF, BMP and WebP files, ids "
            "beyond int32, images without annotations",
            "converted: PNGs of every mode kept as they are (a 16-bit PNG decodes to its top "
            "byte; Pillow would clip it to white), CMYK JPEGs, GIF, BMP and WebP re-encoded as RGB "
            "JPEG; every written image decoded once by the input pipeline's decoder (one it cannot "
            "read is `corrupt_image`); ids kept exactly", "tests/data/test_coco_tfrecord.py::"
            "test_grayscale_cmyk_png_64bit_ids_and_empty_images", "2**40"),
    ],
    "Training run (`python -m rethink_tf.train`)": [
        Case(
            "a non-finite loss or gradient at step k",
            "the step's update is never applied; the run stops with exit 1: `non-finite loss "
            "at step k (every term=value): ... the last good checkpoint is .../ckpt-j, intact; "
            "run the same command to resume from it` and what to change; nothing is saved "
            "after step k-1; resuming continues from ckpt-j", "tests/training/test_divergence.py::"
            "test_nan_loss_is_skipped_then_stops_naming_step_terms_and_last_good_checkpoint",
            "the last good checkpoint is"),
        Case(
            "the same, with `TrainConfig.skip_nonfinite_steps = N`",
            "up to N such steps are skipped with a warning (counted over the run, saved in "
            "the checkpoint, `skipped_nonfinite_steps` in TensorBoard); the next one stops "
            "the run as above", "tests/training/test_divergence.py::"
            "test_nan_loss_is_skipped_then_stops_naming_step_terms_and_last_good_checkpoint",
            "skip_nonfinite_steps = 1 used"),
        Case(
            "a NaN loss on one replica of two (MirroredStrategy)",
            "the replicas agree (an all-reduce) and none applies the step: weights and "
            "momentum untouched, the step counter advanced; the next step applies normally",
            "tests/training/test_divergence.py::"
            "test_a_nan_on_one_replica_skips_the_step_on_every_replica",
            "replica_id_in_sync_group"),
        Case(
            "the disk fills during a checkpoint write (a real size-limited tmpfs)",
            "exit 1: `could not write checkpoint .../ckpt-10 at step 10: ... No space left on "
            "device; removed its partial files [...]; the previous checkpoint .../ckpt-5 is "
            "intact: free space ... and run the same command`; ckpt-5 restores",
            "tests/training/test_full_disk.py::"
            "test_disk_full_during_checkpoint_write_keeps_the_previous_one_restorable",
            "No space left on device"),
        Case(
            "SIGKILL while a checkpoint is being written",
            "the damaged checkpoint never becomes the latest; the next start resumes from "
            "the previous one", "tests/training/test_train_and_resume.py::"
            "test_kill_during_checkpoint_write_keeps_the_previous_checkpoint",
            "the damaged ckpt-10 never became latest"),
        Case(
            "SIGTERM (preemption)",
            "checkpoint at the current step, exit 0; the restarted run logs the losses of "
            "an uninterrupted one", "tests/training/test_train_and_resume.py::"
            "test_sigterm_saves_exits_cleanly_and_resumes_identically", "preempted \\(SIGTERM\\)"),
        Case(
            "a training shard with flipped bytes inside a record (its CRC fails) met inside a "
            "compiled multi-step call",
            "exit 1 with one line: `unreadable training data: SHARD: record I at byte OFFSET "
            "(corrupted record at N); checkpoint .../ckpt-S holds step S` (S = the last "
            "completed step: its optimizer has applied S updates) and the two ways on (replace "
            "the shard, or skip); a restart stops the same way, with no new checkpoint",
            "tests/training/test_damaged_input.py::test_stop_restart_then_skip",
            "error: unreadable training data: "),
        Case(
            "that shard and a truncated one, with `InputConfig.skip_damaged_records = True` "
            "(allowed when resuming)",
            "every shard read once; each damaged one replaced by a copy of its readable records "
            "in `model_dir/repaired_shards/` (kept across restarts); each skipped record printed, "
            "the count printed before and after training and written as `data/skipped_records`; "
            "the run completes",
            "tests/training/test_damaged_input.py::test_stop_restart_then_skip",
            "skipped 2 damaged training record(s)"),
        Case(
            "a record whose length bytes are damaged, with skipping on",
            "the next record is found by its length CRC: only the damaged record is lost",
            "tests/training/test_damaged_input.py::"
            "test_a_damaged_header_is_skipped_and_reading_resumes_after_it", "corrupted record at"),
        Case(
            "odd images inside intact training or validation records: 1 x 1, 2 x 4000, "
            "grayscale, RGBA, palette and 16-bit PNGs, CMYK and progressive JPEGs, an animated "
            "GIF, BMP, WebP", "used: each decodes as Pillow decodes it (a 16-bit image to its top "
            "byte, an animation to its first frame) and trains and evaluates",
            "tests/data/test_odd_images.py::test_a_legal_image_decodes_as_pillow_decodes_it",
            "expected_pixels("),
        Case(
            "a record whose image payload is corrupt (header intact), or whose image decodes to "
            "another size than its `image/height`/`image/width`, in a training shard",
            "exit 1 with one line: `unreadable training data: SHARD: record I at byte OFFSET "
            "(image/encoded decodes to 64 x 72 pixels but image/height, image/width say 64 x "
            "64); checkpoint ...` and the two ways on; with `skip_damaged_records` each is "
            "skipped, printed and counted, and every other odd image is trained on",
            "tests/training/test_odd_images_training.py::"
            "test_training_stops_at_an_unusable_image_then_skips_it", "skipping damaged record: "),
        Case(
            "the same in a validation shard (`rethink_tf.evaluate`)",
            "exit 1 with one line: `unreadable validation data: SHARD: record I at byte OFFSET "
            "(REASON); replace the shard`", "tests/training/test_odd_images_training.py::"
            "test_evaluation_stops_at_an_unusable_validation_image",
            "error: unreadable validation data: "),
        Case(
            "fuzzed records through the input pipeline's decode path: images of every format and "
            "size (1 px to 1:20000) whole, cut short, with flipped or appended bytes; random "
            "bytes; features of the wrong type or count (hypothesis, 60 examples; `-m slow`: "
            "3000)", "each decoded at the size its features say, or refused with the one-line "
            "`damaged record #ID: REASON` that names the record; every refused record is one "
            "`verify_tfrecords` lists (so skipping drops it)",
            "tests/export/test_fuzz.py::test_fuzz_input_pipeline_decode",
            "assert example_problem(record) is not None"),
        Case(
            "checking shards before a long run: `rethink-tf-verify-tfrecords --pattern=GLOB`",
            "every record read (CRCs) and parsed; one line per problem `SHARD: record I at byte "
            "OFFSET: WHAT`, a summary, exit 1 when anything is wrong",
            "tests/data/test_verify_tfrecords.py::"
            "test_flipped_bytes_and_truncation_name_shard_and_offset", "problem(s) in 2 shard(s)"),
    ],
    "Configuration (gin files, `--gin_param`, `--model_dir`)": [
        Case(
            "a misspelled parameter in a gin file",
            "ConfigError before any model is built: the configurable, the parameter, "
            "`did you mean ...?`, the file and line", "tests/test_run_config.py::"
            "test_misspelled_parameter_in_a_file_names_file_line_and_the_right_name",
            "(did you mean build_model.width_multiplier?)"),
        Case(
            "a misspelled configurable in `--gin_param`",
            "ConfigError with the nearest configurables and the binding",
            "tests/test_run_config.py::"
            "test_misspelled_configurable_in_a_param_names_the_binding",
            "No configurable matching 'TrainConfg'"),
        Case("an undefined macro; a syntax error",
             "ConfigError: `the macro %X is used but never bound`; the offending binding",
             "tests/test_run_config.py::test_undefined_macro_and_syntax_error",
             "is used but never bound"),
        Case(
            "real data without its bindings, or patterns that match no file",
            "ConfigError naming each missing binding, or the binding and its pattern, before "
            "a model is built", "tests/test_run_config.py::"
            "test_missing_data_bindings_are_named_before_a_model_is_built", "must be bound"),
        Case(
            "incompatible choices: scratch with FrozenBN or frozen stages, pretrained "
            "without a checkpoint",
            "InitError saying why (the paper's frozen-at-random scratch runs lost 3 AP)",
            "tests/modeling/test_init_guard_rails.py::"
            "test_guard_rails_fire_from_gin_before_training", "needs a backbone"),
        Case(
            "a `--model_dir` whose run had a different operative config",
            "exit 1 before any step, nothing written: `... holds a run with a different "
            "operative config` listing each `binding: old -> new`; with "
            "`--allow_config_change` the run resumes and the changes go to "
            "`config_changes.txt` (log, eval, checkpoint and stop settings may always change)",
            "tests/test_run_config.py::"
            "test_a_model_dir_with_another_config_is_refused_then_allowed",
            "holds a run with a different operative config"),
        Case(
            "a keypoint head without keypoint data (or the other way round)",
            "ConfigError before training: `build_model.num_keypoints = K but "
            "InputConfig.keypoint_names names N keypoints`",
            "tests/modeling/test_keypoint_rcnn.py::"
            "test_keypoint_head_without_keypoint_data_is_refused_before_training",
            "InputConfig.keypoint_names names 0 keypoints"),
        Case(
            "`build_model.cascade_start_step` on a model without cascade stages",
            "ConfigError before any step, naming the binding that adds the stages",
            "tests/training/test_warm_start.py::"
            "test_a_cascade_start_step_without_cascade_stages_is_refused",
            "cascade_start_step = 5 but the model has no cascade"),
        Case(
            "`SyntheticDataset` parameters the generator cannot honour (no images, a side under "
            "32 px, a negative object count, no shard, a malformed size)",
            "ConfigError naming the parameter and its allowed range, before anything is written; "
            "every accepted combination generates a dataset the strict converter accepts",
            "tests/data/test_synthetic.py::"
            "test_parameters_it_cannot_honour_are_refused_by_name_before_writing",
            "SyntheticDataset.num_val = 0"),
        Case("a Cascade R-CNN with one IoU", "ValueError: one IoU per stage and at least 2 stages",
             "tests/modeling/test_cascade.py::test_one_stage_cascade_is_refused",
             "at least 2 stages"),
        Case(
            "`InputConfig.train_canvases` empty, not multiples of 32, without one canvas holding "
            "the others, or whose largest is not `padded_size`",
            "ConfigError naming the binding and the canvases at fault, before any model is built",
            "tests/data/test_canvases.py::test_bad_canvases_are_refused_by_name",
            "holding all the others"),
    ],
    "Weights": [
        Case("a Detectron pickle that would run code", "refused by the restricted unpickler",
             "tests/modeling/test_convert_weights.py::test_code_in_a_pickle_is_refused",
             "refusing to load"),
        Case("a weight file with missing or unused tensors", "ConversionError naming each tensor",
             "tests/modeling/test_convert_weights.py::test_missing_and_unused_weights_are_named",
             "layer3.2.conv2.weight"),
        Case("a warm-start checkpoint that does not exist",
             "FileNotFoundError naming the missing `.index`, before any step",
             "tests/training/test_warm_start.py::test_a_missing_warm_start_checkpoint_is_named",
             "nothing/ckpt-5.index does not exist"),
        Case(
            "a warm-start checkpoint of a different model (plain vs cascade)",
            "the variables that fit by path and shape are restored, the others keep their "
            "initialization; the counts and names are printed",
            "tests/training/test_warm_start.py::test_plain_checkpoint_continues_as_cascade",
            "warm start from"),
    ],
    "Serving (the exported SavedModel, validated in the graph)": [
        Case(
            f"request: {case.replace('_', ' ')}",
            "InvalidArgumentError naming the input and the problem; the model serves the "
            "next request correctly",
            "tests/export/test_export.py::test_bad_request_names_the_problem", f'"{case}"')
        for case in ("empty_string", "not_an_image", "one_byte_file", "truncated_jpeg",
                     "corrupt_png_idat", "wrong_dtype", "wrong_rank", "zero_size_image",
                     "four_channels", "empty_batch", "example_without_image", "not_an_example",
                     "random_bytes_example", "example_with_int_image")
    ] + [
        Case(
            "fuzzed requests to all three signatures: encoded images of every format TensorFlow "
            "reads at sizes from 1 px to 1:20000, whole, cut short, with flipped or appended "
            "bytes; Examples of random bytes, wrong feature types and counts; uint8 tensors of "
            "random rank and shape (hypothesis, 130 requests; `-m slow`: 6500)",
            "each served (detections inside the image) or refused with an InvalidArgumentError "
            "naming the input and its batch index, in printable text; nothing else; the same "
            "loaded model then answers a normal image exactly as before",
            "tests/export/test_fuzz.py::test_served_detections_are_unchanged_after_the_fuzz",
            "assert_array_equal(after[k], v"),
    ] + [
        Case(
            f"request: {what}", "refused before decoding (the size is read from the encoded "
            "header) with an InvalidArgumentError naming the input, its batch index, its size and "
            "the limit and export flag; the model serves the next request correctly",
            "tests/export/test_export.py::test_bad_request_names_the_problem", f'"{case}"')
        for case, what in (
            ("png_declaring_20000x20000", "a 1.2 MB PNG declaring 20000 x 20000 pixels"),
            ("jpeg_over_pixel_budget", "a real 8192 x 6144 JPEG (50.3 MP > 50 MP)"))
    ] + [
        Case(
            "request: an image of extreme aspect ratio (a 1 x 20000, 20000 x 1 or 3 x 7000 PNG; a "
            "[1, 1, 9000, 3] tensor)", "served: the short side resizes to at least one pixel "
            "(not 0, which the resize op refuses), detections in the image's pixels",
            "tests/export/test_export.py::test_extreme_aspect_ratios_are_served", "(1, 20000)"),
        Case(
            "request: 65 images (over --max_batch_size 64)",
            "InvalidArgumentError naming the input, the batch size and the limit, before any "
            "image is decoded", "tests/export/test_export.py::test_bad_request_names_the_problem",
            '"batch_over_bound"'),
        Case(
            "a 12 MP (4032 x 3024) phone photo, in a TensorFlow-only client under a 3 GB data "
            "limit", "served: peak memory within 1.5x of a 640 x 480 photo's, the response under "
            "50 MB (masks as RLE strings), every mask equal to its full-image paste",
            "tests/export/test_export.py::test_phone_photo_costs_its_detections_not_its_canvas",
            "1.5 * float(small"),
    ],
}


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def render() -> str:
  lines = [
      "# Reliability: bad input and what happens",
      "",
      "Generated by `python -m dev.reliability_table` from the converter's rules",
      "(`rethink_tf/data/coco_validation.py`) and the cases the tests try;",
      "`tests/dev/test_reliability_table.py` fails when this page, a named test or the",
      "evidence it asserts disagree. No row loses what was already saved: shards, reports and",
      "run files are written under a temporary name and renamed, and a checkpoint becomes the",
      "latest only once it is complete.",
      "",
      "## Data conversion: each problem in a record",
      "",
      "`python -m rethink_tf.data.coco_tfrecord` checks every image and annotation. Each",
      "problem is repaired by its rule or its record is skipped, and counted in the end-of-run",
      "report (also `{output}-report.json`) with example records; `--strict` makes any of them",
      f"an error. Shown by `{CONVERTER_TEST}`,",
      "which plants one of each in real COCO data.",
      "",
      "| Kind | Record | Action | Rule |",
      "| --- | --- | --- | --- |",
  ]
  for kind, p in PROBLEMS.items():
    lines.append(f"| `{kind}` | {p.record} | {p.action} | {_cell(p.rule)} |")
  for section, cases in CASES.items():
    lines += [
        "", f"## {section}", "", "| Bad input | What happens | Shown by |", "| --- | --- | --- |"
    ]
    for c in cases:
      lines.append(f"| {_cell(c.bad_input)} | {_cell(c.what_happens)} | `{c.test}` |")
  return "\n".join(lines) + "\n"


def all_cases() -> List[Case]:
  """Every row with its test, the converter's included."""
  rows = [Case(kind, p.rule, CONVERTER_TEST, f'"{kind}"') for kind, p in PROBLEMS.items()]
  return rows + [c for cases in CASES.values() for c in cases]


FLAGS = flags.FLAGS


def main(argv):
  del argv
  text = render()
  if not FLAGS.check:
    sys.stdout.write(text)
    return
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, DOC)) as f:
    if f.read() != text:
      sys.exit(f"{DOC} is stale: regenerate it with python -m dev.reliability_table")


if __name__ == "__main__":
  flags.DEFINE_bool("check", False, f"Exit 1 when {DOC} differs from the generated page.")
  app.run(main)
