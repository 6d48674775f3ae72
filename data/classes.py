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
