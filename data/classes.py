"""The 22 findings the toolkit classifies, in the fixed column order of every CSV it writes."""

CLASSES = [
    "aortic elongation",
    "atelectasis",
    "cardiomegaly",
    "catheter",
    "copd signs",
    "pleural effusion",
    "electrical device",
    "emphysema",
    "heart insufficiency",
    "infiltrates",
    "mass",
    "nodule",
    "normal",
    "nsg tube",
    "other findings",
    "pneumonia",
    "pneumothorax",
    "pulmonary edema",
    "pulmonary fibrosis",
    "surgery",
    "thoracic cage deformation",
    "tuberculosis",
]
NUM_CLASSES = len(CLASSES)

# The headline (mean AUROC, best-checkpoint choice) averages these 20: 'normal' and 'other findings' are reported in
# their own rows, since both measure the absence of the other findings more than a finding of their own.
SUMMARY_ROWS = ["normal", "other findings"]
FINDINGS = [c for c in CLASSES if c not in SUMMARY_ROWS]
