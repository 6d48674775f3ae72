"""A traintest.py run folder: the name of every file a run writes there, in one place.

Every module that writes or reads a run's files takes its name from here, so that --overwrite, the report, the
comparison of two runs and the sample world's score agree on what a run holds.
"""

ARGS_JSON = "args.json"
TRAIN_LOG = "train.log"
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
METRICS_CSV = "metrics.csv"
PREDICTIONS_CSV = "predictions.csv"
THRESHOLDS_CSV = "thresholds.csv"
CALIBRATION_CSV = "calibration.csv"
RELIABILITY_PNG = "reliability.png"
ROC_PNG = "roc.png"
HEATMAPS_DIR = "heatmaps"
HEATMAP_INDEX_CSV = "index.csv"  # inside HEATMAPS_DIR
BOXES_CSV = "boxes.csv"
LOCALIZATION_CSV = "localization.csv"
REPORT_HTML = "report.html"
SKIPPED_IMAGES_CSV = "skipped_images.csv"
PREDICT_ERRORS_CSV = "predict_errors.csv"
COMPARE_DIR = "compare"
COMPARE_CSV = "compare.csv"  # inside COMPARE_DIR/<name of the run compared with>

# What a run writes besides args.json and train.log: --overwrite deletes these before the new run starts, so that
# nothing of the old run can be resumed or mixed with the new one.
RUN_OUTPUTS = (CHECKPOINT_LAST, CHECKPOINT_BEST, METRICS_CSV, PREDICTIONS_CSV, THRESHOLDS_CSV, ROC_PNG, CALIBRATION_CSV,
               RELIABILITY_PNG, BOXES_CSV, LOCALIZATION_CSV, REPORT_HTML, SKIPPED_IMAGES_CSV, PREDICT_ERRORS_CSV,
               HEATMAPS_DIR, COMPARE_DIR)
