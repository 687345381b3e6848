"""Acting on a confidence: test-time scaling by voting (``voting``), self-correction (``self_correct``),
model cascades (``cascade``), selective answering with a finite-sample guarantee (``selective``) and
keeping a served confidence calibrated from feedback (``recalibration``)."""
