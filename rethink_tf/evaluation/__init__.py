"""Host-side COCO evaluation with pycocotools."""
