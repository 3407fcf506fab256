"""The benchmark harness: the two models are built at the same settings, workers report over
their protocol and fail loudly, and the results table states each target as met or not."""

import os
import sys

import gin
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, REPO_ROOT)

from benchmarks import contenders, report, run  # noqa: E402


def test_model_garden_and_ours_share_the_settings():
  """Proposals, sampled RoIs, anchors, heads, detections and classes: the values each side
  actually builds with are equal."""
  gin.clear_config()
  contenders.our_gin(512, 2, "BN")
  from rethink_tf.modeling.build import build_model
  ours = build_model(num_classes=contenders.NUM_CLASSES, image_size=(512, 512))
  m = contenders.mg_config(512, 2).task.model
  assert ours.num_classes == m.num_classes == 4
  assert ours.image_size == tuple(m.input_size[:2]) == (512, 512)
  assert (min(ours.feature_levels), max(ours.feature_levels)) == (m.min_level, m.max_level)
  assert ours.anchor_kwargs["aspect_ratios"] == tuple(m.anchor.aspect_ratios)
  assert ours.anchor_kwargs["anchor_size"] == m.anchor.anchor_size
  assert len(ours.anchor_kwargs["anchor_scales"]) == m.anchor.num_scales
  assert ours.rpn_topk[True] == (m.roi_generator.pre_nms_top_k, m.roi_generator.num_proposals)
  assert ours.rpn_topk[False] == (m.roi_generator.test_pre_nms_top_k,
                                  m.roi_generator.test_num_proposals)
  assert ours.rpn_nms_threshold == m.roi_generator.nms_iou_threshold
  assert ours.roi_heads.samples_per_image == m.roi_sampler.num_sampled_rois
  assert ours.roi_heads.positive_fraction == m.roi_sampler.foreground_fraction
  assert ours.roi_heads.branch_rois_per_image == m.mask_sampler.num_sampled_masks == 128
  assert len(ours.roi_heads.box_head.convs) == m.detection_head.num_convs == 4
  assert ours.roi_heads.box_head.fcs[0].units == m.detection_head.fc_dims == 1024
  assert len(ours.roi_heads.box_head.fcs) == m.detection_head.num_fcs
  assert len(ours.roi_heads.branch("mask").convs) == m.mask_head.num_convs == 4
  assert ours.fpn._cfg["out_channels"] == m.decoder.fpn.num_filters == 256
  assert ours.detections_per_image == (contenders.mg_config(
      512, 2).task.model.detection_generator.max_num_detections)
  assert ours.backbone._cfg["depth"] == m.backbone.resnet.model_id == 50
  gin.clear_config()


def test_workers_alternate_and_report_memory(tmp_path):
  spec = dict(job="matmul", impl="ours", size=64, batch=2)
  out = run.alternate({"a": spec, "b": spec}, str(tmp_path), warmup=1, reps=3, steps=2, batch=2)
  for name in ("a", "b"):
    fig = out[name]
    assert len(fig["seconds_all"]) == 3
    assert fig["seconds_per_call"] == sorted(fig["seconds_all"])[1]
    assert fig["images_per_s"] == pytest.approx(2 / fig["seconds_per_call"])
    assert fig["peak_rss_mb"] > 100  # a TF process
    rates = fig["matmul_flops_per_s"]
    assert rates["float32"] > 1e9 and rates["bfloat16"] > 1e9
  assert os.path.exists(tmp_path / "a.log")


def test_a_failing_worker_names_its_log(tmp_path):
  with pytest.raises(RuntimeError, match=r"contender broken exited with code 1 .*broken\.log"):
    run.alternate({"broken": dict(job="nonsense", impl="ours", size=64, batch=2)},
                  str(tmp_path),
                  warmup=1,
                  reps=1,
                  steps=1,
                  batch=2)
  assert "unknown benchmark job 'nonsense'" in (tmp_path / "broken.log").read_text()


def test_report_states_each_target():
  results = dict(date="2026-01-01T00:00:00+00:00",
                 command="python -m benchmarks.run --suite=all",
                 settings=dict(size=512, batch=2, reps=3, steps=1, precision="float32"),
                 machine=dict(cpu="Some CPU",
                              cpus=2,
                              mem_gib=23.5,
                              versions={"tensorflow": "2.20.0"}),
                 train=dict(ratios={
                     "ours_BN/model_garden_BN images_per_s": 1.6,
                     "ours_GN/model_garden_BN images_per_s": 1.1,
                     "ours_BN/model_garden_BN peak_rss": 0.9
                 },
                            figures={
                                "ours_BN":
                                    dict(images_per_s=0.2, peak_rss_mb=5000.0),
                                "flops":
                                    dict(train_forward_flops=7e11,
                                         matmul_flops_per_s={"float32": 1.5e11, "bfloat16": 4e11},
                                         achieved_flops_per_s=1.2e11,
                                         fraction_of_matmul=0.8,
                                         model_garden_achieved_flops_per_s=1.25e11)
                            }),
                 export=dict(ratios={"load_plus_first_call": 0.4}, figures={}))
  table = report.markdown(results)
  assert "| train | ours_BN/model_garden_BN images_per_s | 1.60 | >= 1.5 | yes |" in table
  assert "| train | ours_GN/model_garden_BN images_per_s | 1.10 | >= 1.2 | NO |" in table
  assert "| train | ours_BN/model_garden_BN peak_rss | 0.90 | <= 1.0 | yes |" in table
  assert "| export | load_plus_first_call | 0.40 | <= 0.5 | yes |" in table
  assert "120 / 150 GFLOP/s = 0.80" in table
  assert "| train | ours_BN | images_per_s 0.2, peak_rss_mb 5,000 |" in table
  assert "infer" not in table  # suites not run are not reported
