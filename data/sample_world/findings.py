"""The drawn findings: one spec per finding, holding everything the sample world knows about it.

A spec is a Finding subclass registered with @drawn. It carries
- PadChest: its taxonomy terms (`terms`), how one occurrence samples its parameters (`sample`), its localizations
  (`localizations`) and its stemmed Spanish report sentence (`spanish`, `spanish_side`);
- OpenI: its findings sentence, impression, MeSH major and MeSH automatic term (`sentences`), and whether it is a
  focal airspace opacity (`airspace`);
- the radiograph: where its sign sits (`layer`), the heart size it implies (`cardiothoracic_ratio`) and its drawing
  (`draw`, returning a Sign: ground-truth box masks, density layers, pleural fluid / air / visceral line).

One finding of a study is a dict {"name", "side", "terms", and the parameters its spec samples (zone, route, leads,
count, size)}. Adding a drawn finding is adding one spec to this file. The registration order is DRAWN_FINDINGS, the
order in which a study draws its findings' random numbers: reordering or inserting specs changes every world.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

from data.sample_world.geometry import polyline_layer, side_sign, smooth, spline

# Where a sign sits, from the heart out to the lines and devices on top. draw_chest draws the findings layer by layer
# (in list order within a layer), which fixes the order of their random numbers and of their boxes.
LAYERS = ("heart", "pleural fluid", "pleural air", "lung", "device")

FINDINGS = {}


def drawn(cls):
    """Class decorator: registers one instance of a finding spec under its name, in definition order."""
    assert cls.layer in LAYERS, cls.layer
    FINDINGS[cls.name] = cls()
    return cls


@dataclass
class Sign:
    """What one finding adds to a radiograph, as arrays at the drawing size.

    boxes: one mask per ground-truth box (its pixels > 0.5 bound the box); density: (weight, layer) pairs added to
    the density in order, on top of the anatomy; fluid, air: pleural fluid and pleural air, which the anatomy merges
    over all findings (fluid whitens the lung base and hides its markings, air darkens the lung and removes them);
    line: the visceral pleural line that bounds pleural air."""
    boxes: list
    density: list = field(default_factory=list)
    fluid: np.ndarray = None
    air: np.ndarray = None
    line: np.ndarray = None


class Finding:
    """A drawn finding. Subclasses set the attributes and implement the methods that raise here."""
    name = None
    terms = ()  # PadChest taxonomy terms (data/labels/padchest_tree.csv); the label parser rolls them up to the class
    layer = "lung"  # one of LAYERS
    spanish = ""  # PadChest reports are stemmed Spanish
    spanish_side = False  # the Spanish sentence ends with the side
    airspace = False  # while one is present, a report cannot say "No focal airspace disease."
    cardiothoracic_ratio = None  # (low, high) heart width over thoracic width, for a finding that sets it

    def sample(self, rng):
        """One occurrence's parameters: a dict with "terms" and what the other methods read (zone, route, ...). It may
        override "side", which sample_findings draws first for every finding."""
        return {"terms": list(self.terms)}

    def localizations(self, f):
        """PadChest localizations of finding f (real PadChest terms such as "loc right", "loc apical")."""
        raise NotImplementedError

    def spanish_sentence(self, f):
        """The PadChest report sentence of finding f."""
        return self.spanish + (" " + ("derech" if f["side"] == "right" else "izquierd") if self.spanish_side else "")

    def sentences(self, pick, f):
        """(findings sentence, impression sentence, MeSH major, MeSH automatic) of finding f in an OpenI report;
        pick(options) draws one of the options from the report's random stream."""
        raise NotImplementedError

    def draw(self, rng, chest, f):
        """The Sign of finding f on chest (an anatomy.Chest); rng: the image's stream of finding parameters."""
        raise NotImplementedError


def sample_findings(rng, normal_fraction, prevalence):
    """One study's findings: a list of finding dicts in DRAWN_FINDINGS order; empty list = normal study."""
    if rng.random() < normal_fraction:
        return []
    while True:
        names = [n for n in FINDINGS if rng.random() < prevalence]
        if names:
            break
    findings = []
    for name in names:
        f = {"name": name, "side": str(rng.choice(["right", "left"]))}
        f.update(FINDINGS[name].sample(rng))
        findings.append(f)
    return findings


def _sides(f):
    """The side as written inside a sentence and at its start."""
    return f["side"], f["side"].capitalize()


def _zone_lobe(f):
    """The lobe of a lung zone, in OpenI's words."""
    if f["zone"] == "middle":
        return "lingula" if f["side"] == "left" else "middle lobe"
    return f["zone"] + " lobe"


def _lobe_localizations(f):
    """PadChest localizations of a lesion in a lung zone (PadChest has no middle lobe term: the side alone)."""
    return ["loc " + f["side"] + (" upper lobe" if f["zone"] == "upper" else
                                  (" lower lobe" if f["zone"] == "lower" else ""))]


def disc(chest, x0, y0, r, ox=0.0, oy=0.0):
    """Bool mask of a disc of radius r (in image widths, so round on a non-square image) at (x0 + ox, y0 + oy).

    The offset is subtracted apart from the centre because adding it to the centre first rounds differently and
    would change the bytes of every world."""
    return (((chest.X - x0 - ox) / r) ** 2 + ((chest.Y - y0 - oy) * chest.h / chest.w / r) ** 2) < 1


def rectangle_layer(h, w, x, y, width, height, angle):
    """Anti-aliased filled rectangle centred at (x, y) and rotated by angle (radians), as a float layer in [0, 1]."""
    corners = np.array([[x - width / 2, y - height / 2], [x + width / 2, y - height / 2],
                        [x + width / 2, y + height / 2], [x - width / 2, y + height / 2]])
    c, s = np.cos(angle), np.sin(angle)
    centered = corners - [x, y]
    corners = np.stack([centered[:, 0] * c - centered[:, 1] * s, centered[:, 0] * s + centered[:, 1] * c], 1) + [x, y]
    layer = np.zeros((h, w), np.uint8)
    cv2.fillPoly(layer, [np.round(corners * [w, h]).astype(np.int32)], 255, cv2.LINE_AA)
    return layer.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------------------
# The specs, in DRAWN_FINDINGS order


@drawn
class Atelectasis(Finding):
    """Plate-like atelectasis: a short, roughly horizontal band in the lower or middle lung field."""
    name = "atelectasis"
    terms = ("atelectasis", "laminar atelectasis", "atelectasis basal")
    spanish = "atelectasi laminar"
    airspace = True

    def sample(self, rng):
        term = str(rng.choice(self.terms, p=[0.3, 0.5, 0.2]))
        zone = str(rng.choice(["lower", "middle"], p=[0.7, 0.3]))
        return {"terms": [term], "zone": "lower" if term == "atelectasis basal" else zone}

    def localizations(self, f):
        return ["loc " + f["side"], "loc basal" if f["zone"] == "lower" else "loc middle lung field"]

    def sentences(self, pick, f):
        side, Side = _sides(f)
        if f["zone"] == "lower":
            s = pick([f"Linear opacity in the {side} lung base consistent with subsegmental atelectasis.",
                      f"{Side} basilar atelectasis.", f"Streaky {side} basilar opacity compatible with atelectasis."])
            return s, f"{Side} basilar atelectasis.", f"Pulmonary Atelectasis/base/{side}", "atelectases"
        s = pick([f"Platelike atelectasis in the {side} midlung.", f"Linear {side} midlung atelectasis."])
        return s, f"{Side} midlung atelectasis.", f"Pulmonary Atelectasis/lung/{side}", "atelectases"

    def draw(self, rng, chest, f):
        h, w = chest.h, chest.w
        s = side_sign(f["side"])
        x0, y0 = chest.lung_point(rng, f["side"], f["zone"], lateral=(0.35, 0.55))
        length = rng.uniform(0.16, 0.24)
        ang = np.deg2rad(rng.uniform(-18, 8)) * -s  # dipping laterally
        p0 = (x0 - s * length / 2 * np.cos(ang), y0 - length / 2 * np.sin(ang) * w / h)
        p1 = (x0 + s * length / 2 * np.cos(ang), y0 + length / 2 * np.sin(ang) * w / h)
        band = polyline_layer(h, w, [p0, p1], rng.uniform(0.022, 0.03) * w) * (chest.lung > 0)
        return Sign(boxes=[band], density=[(0.30, smooth(band, 0.002 * chest.px))])


@drawn
class Cardiomegaly(Finding):
    """An enlarged heart: the anatomy draws the heart with this spec's cardiothoracic ratio."""
    name = "cardiomegaly"
    terms = ("cardiomegaly",)
    layer = "heart"
    spanish = "cardiomegali"
    cardiothoracic_ratio = (0.58, 0.66)

    def localizations(self, f):
        return ["loc cardiac"]

    def sentences(self, pick, f):
        grade = pick(["mild", "moderate"])
        s = pick([f"The heart is {grade}ly enlarged.", "Cardiomegaly is present.", "Enlarged cardiac silhouette.",
                  "The cardiac silhouette is enlarged.", f"{grade.capitalize()} cardiomegaly."])
        return s, pick(["Cardiomegaly.", "Enlarged heart."]), f"Cardiomegaly/{grade}", "cardiomegaly"

    def draw(self, rng, chest, f):
        # the box is the heart shadow down to the diaphragm, not the part hidden below it
        return Sign(boxes=[chest.heart * (chest.Y < max(chest.y_d.values()) + 0.01)])


@drawn
class Catheter(Finding):
    """Central venous catheter through the jugular or subclavian vein, its tip in the superior vena cava."""
    name = "catheter"
    terms = ("central venous catheter via jugular vein", "central venous catheter via subclavian vein",
             "central venous catheter")
    layer = "device"
    spanish = "cateter venos central"

    def sample(self, rng):
        term = str(rng.choice(self.terms, p=[0.5, 0.3, 0.2]))
        # the plain term leaves the route open, but the drawing needs one
        route = "subclavian" if "subclavian" in term else ("jugular" if "jugular" in term else
                                                           str(rng.choice(["jugular", "subclavian"])))
        return {"terms": [term], "route": route, "side": str(rng.choice(["right", "left"], p=[0.75, 0.25]))}

    def localizations(self, f):
        return ["loc superior cave vein"] + (["loc subclavian vein"] if f["route"] == "subclavian" else [])

    def sentences(self, pick, f):
        side, Side = _sides(f)
        if f["route"] == "jugular":
            short = "IJ" if side == "right" else "internal jugular"
            s = pick([f"{Side} {short} central venous catheter with tip in the SVC.",
                      f"{Side} internal jugular central line terminates in the superior vena cava."])
            imp = f"{Side} {short} catheter in satisfactory position."
        else:
            s = pick([f"{Side} subclavian central venous catheter with tip in the SVC.",
                      f"{Side} subclavian line with tip at the cavoatrial junction."])
            imp = f"{Side} subclavian catheter in satisfactory position."
        return s, imp, "Catheters, Indwelling", "central venous catheters"

    def draw(self, rng, chest, f):
        s = side_sign(f["side"])
        cx, y_ap, tw = chest.cx, chest.y_ap, chest.tw
        svc = (cx - 0.045 + rng.uniform(-0.01, 0.01), chest.hcy - chest.hb + rng.uniform(-0.02, 0.03))
        if f["route"] == "jugular":
            pts = [(cx + s * 0.07, 0.0), (cx + s * 0.065, y_ap), (cx + s * 0.05, y_ap + 0.08)]
        else:
            pts = [(cx + s * (tw + 0.02), y_ap + 0.01), (cx + s * 0.22, y_ap + 0.06), (cx + s * 0.07, y_ap + 0.09)]
        pts = spline(pts + [(cx - 0.04, svc[1] - 0.1), svc], 60)
        line = polyline_layer(chest.h, chest.w, pts, rng.uniform(0.015, 0.018) * chest.w)
        return Sign(boxes=[line], density=[(0.5, line)])


@drawn
class PleuralEffusion(Finding):
    """Meniscus-shaped fluid filling a lung base, higher laterally."""
    name = "pleural effusion"
    terms = ("pleural effusion", "loculated pleural effusion")
    layer = "pleural fluid"
    spanish = "derram pleural"
    spanish_side = True
    airspace = True

    def sample(self, rng):
        return {"terms": [str(rng.choice(self.terms, p=[0.85, 0.15]))], "size": str(rng.choice(["small", "moderate"]))}

    def localizations(self, f):
        return ["loc " + f["side"], "loc pleural", "loc costophrenic angle"]

    def sentences(self, pick, f):
        side = f["side"]
        size = f.get("size", "small")
        s = pick([f"There is a {size} {side} pleural effusion.",
                  f"{size.capitalize()} {side}-sided effusion with blunting of the {side} costophrenic angle.",
                  f"{size.capitalize()} {side} pleural effusion."])
        return s, f"{size.capitalize()} {side} pleural effusion.", f"Pleural Effusion/{side}", "pleural effusion"

    def draw(self, rng, chest, f):
        s = side_sign(f["side"])
        depth = (0.19 if f.get("size", "small") == "moderate" else 0.14) + rng.uniform(-0.02, 0.02)
        dx = s * (chest.X - chest.cx)
        top = chest.y_d[s] + 0.08 - depth * (0.5 + 0.6 * np.clip(dx / chest.tw, 0, 1) ** 2)
        fluid = chest.lungs[s] * (chest.Y > top)
        return Sign(boxes=[fluid], fluid=fluid)


@drawn
class ElectricalDevice(Finding):
    """Cardiac pacemaker: a generator on the upper chest wall, one or two leads into the right heart."""
    name = "electrical device"
    terms = ("pacemaker", "dual chamber device", "single chamber device")
    layer = "device"
    spanish = "marcapas"

    def sample(self, rng):
        pacemaker, dual, single = self.terms
        leads = int(rng.choice([1, 2]))
        # PadChest names the chambers of every two-lead device but of only half the one-lead devices
        terms = [pacemaker] + ([dual] if leads == 2 else ([single] if rng.random() < 0.5 else []))
        return {"leads": leads, "terms": terms, "side": str(rng.choice(["left", "right"], p=[0.8, 0.2]))}

    def localizations(self, f):
        return ["loc cardiac"]

    def sentences(self, pick, f):
        _, Side = _sides(f)
        if f["leads"] == 2:
            s = pick([f"{Side}-sided pacemaker with leads in the right atrium and right ventricle.",
                      "Dual lead cardiac pacemaker in place."])
        else:
            s = pick([f"{Side} chest wall pacemaker with a single lead in the right ventricle.",
                      "Cardiac pacemaker in place."])
        return s, "Pacemaker in place.", "Pacemaker, Artificial", "pacemaker"

    def draw(self, rng, chest, f):
        h, w = chest.h, chest.w
        s = side_sign(f["side"])
        cx, y_ap, hcx, hcy, ha, hb = chest.cx, chest.y_ap, chest.hcx, chest.hcy, chest.ha, chest.hb
        gx, gy = cx + s * rng.uniform(0.2, 0.26), y_ap + rng.uniform(0.06, 0.11)
        gw, gh = rng.uniform(0.09, 0.12), rng.uniform(0.065, 0.085)
        generator = rectangle_layer(h, w, gx, gy, gw, gh, np.deg2rad(rng.uniform(-20, 20)))
        generator = smooth(generator, 0.004 * chest.px)
        targets = [(hcx + 0.4 * ha, hcy + 0.5 * hb)]  # right ventricular apex
        if f["leads"] == 2:
            targets.append((cx - 0.02, hcy - 0.45 * hb))  # right atrium
        leads = np.zeros((h, w), np.float32)
        for tx, ty in targets:
            pts = spline([(gx, gy), (cx + s * 0.09, y_ap + 0.08), (cx - 0.03, hcy - hb + 0.02), (tx, ty)], 60)
            leads = np.maximum(leads, polyline_layer(h, w, pts, 0.011 * w))
        return Sign(boxes=[generator], density=[(0.45, leads), (0.9, generator)])


@drawn
class Mass(Finding):
    """A lobulated opacity (overlapping discs) larger than a nodule, more often in the upper zones."""
    name = "mass"
    terms = ("mass", "pulmonary mass")
    spanish = "mas pulmonar"
    airspace = True

    def sample(self, rng):
        return {"terms": [str(rng.choice(self.terms))],
                "zone": str(rng.choice(["upper", "middle", "lower"], p=[0.45, 0.35, 0.2]))}

    def localizations(self, f):
        return _lobe_localizations(f)

    def sentences(self, pick, f):
        side, Side = _sides(f)
        lobe = _zone_lobe(f)
        size = pick(["3.5", "4", "5", "6"])
        s = pick([f"There is a {size} cm mass in the {side} {lobe}.", f"Large {side} {lobe} mass.",
                  f"Rounded masslike opacity in the {side} lung measuring {size} cm."])
        return s, f"{Side} lung mass, recommend chest CT.", f"Mass/lung/{side}", "mass lesion"

    def draw(self, rng, chest, f):
        x0, y0 = chest.lung_point(rng, f["side"], f["zone"])
        r = rng.uniform(0.06, 0.085)
        blob = np.zeros((chest.h, chest.w), np.float32)
        for _ in range(3):
            ox, oy = rng.uniform(-0.35, 0.35, 2) * r
            blob = np.maximum(blob, disc(chest, x0, y0, r * rng.uniform(0.65, 0.85), ox, oy))
        return Sign(boxes=[blob], density=[(0.4, smooth(blob, 0.003 * chest.px))])


@drawn
class Nodule(Finding):
    """One round opacity, or two or three of them (multiple nodules), in one lung zone."""
    name = "nodule"
    terms = ("nodule", "multiple nodules")
    spanish = "nodul pulmonar"
    airspace = True

    def sample(self, rng):
        single, multiple = self.terms
        count = 1 if rng.random() < 0.75 else int(rng.integers(2, 4))
        return {"count": count, "terms": [single] if count == 1 else [multiple],
                "zone": str(rng.choice(["upper", "middle", "lower"]))}

    def localizations(self, f):
        return _lobe_localizations(f)

    def sentences(self, pick, f):
        side, Side = _sides(f)
        if f.get("count", 1) > 1:
            s = pick([f"Multiple pulmonary nodules in the {side} lung.",
                      f"Several nodules are seen in the {side} lung."])
            return s, "Multiple pulmonary nodules.", "Nodule/lung/multiple", "multiple pulmonary nodules"
        lobe = _zone_lobe(f)
        size = pick(["8 mm", "1 cm", "1.2 cm", "1.5 cm"])
        s = pick([f"There is a {size} nodule in the {side} {lobe}.", f"Nodular opacity in the {side} {lobe}.",
                  f"{Side} {lobe} pulmonary nodule measuring {size}."])
        return s, f"{Side} {lobe} nodule.", f"Nodule/lung/{lobe}/{side}", "nodule"

    def draw(self, rng, chest, f):
        boxes, density = [], []
        for _ in range(f.get("count", 1)):
            x0, y0 = chest.lung_point(rng, f["side"], f["zone"])
            blob = disc(chest, x0, y0, rng.uniform(0.026, 0.034)).astype(np.float32)
            boxes.append(blob)
            density.append((0.45, smooth(blob, 0.003 * chest.px)))
        return Sign(boxes=boxes, density=density)


@drawn
class NsgTube(Finding):
    """Nasogastric tube: down the midline, through the left hemidiaphragm, its tip curling in the stomach."""
    name = "nsg tube"
    terms = ("NSG tube",)
    layer = "device"
    spanish = "sond nasogastr"

    def localizations(self, f):
        return ["loc gastric chamber"]

    def sentences(self, pick, f):
        s = pick(["NG tube tip in the stomach.", "Nasogastric tube courses below the diaphragm into the stomach.",
                  "Enteric tube with tip in the stomach."])
        return s, "NG tube in the stomach.", "Tube, Inserted", "nasogastric tube"

    def draw(self, rng, chest, f):
        cx, y_ap, tw, yd = chest.cx, chest.y_ap, chest.tw, chest.y_d[1]
        x0 = cx + rng.uniform(-0.01, 0.01)
        pts = spline([(x0 - 0.005, 0.0), (x0 + 0.01, y_ap + 0.05), (x0 + 0.015, 0.45), (x0 + 0.03, yd),
                      (cx + tw * rng.uniform(0.3, 0.45), yd + rng.uniform(0.08, 0.12)),
                      (cx + tw * rng.uniform(0.15, 0.3), yd + rng.uniform(0.14, 0.18))], 80)
        tube = polyline_layer(chest.h, chest.w, pts, rng.uniform(0.015, 0.019) * chest.w)
        return Sign(boxes=[tube], density=[(0.55, tube)])


@drawn
class Pneumothorax(Finding):
    """A rim of air without lung markings along the apex and lateral chest wall, tapering downwards, bounded by a
    visible visceral pleural line."""
    name = "pneumothorax"
    terms = ("pneumothorax",)
    layer = "pleural air"
    spanish = "neumotorax"
    spanish_side = True

    def localizations(self, f):
        return ["loc " + f["side"], "loc apical"]

    def sentences(self, pick, f):
        side, Side = _sides(f)
        s = pick([f"There is a small {side} apical pneumothorax.", f"{Side} pneumothorax is present.",
                  f"Moderate {side} pneumothorax with visible visceral pleural line."])
        return s, f"{Side} pneumothorax.", f"Pneumothorax/{side}", "pneumothorax"

    def draw(self, rng, chest, f):
        s = side_sign(f["side"])
        X, Y, y_ap, y_d = chest.X, chest.Y, chest.y_ap, chest.y_d[s]
        lung = chest.lungs[s] > 0
        # distance to the apex and lateral wall only: extend the lung medially before measuring
        walls = lung | ((s * (X - chest.cx) < 0.12) & (Y > y_ap + 0.02) & (Y < y_d))
        dist = cv2.distanceTransform(walls.astype(np.uint8), cv2.DIST_L2, 5) / chest.px
        y_lim = y_ap + rng.uniform(0.55, 0.75) * (y_d - y_ap)
        depth = rng.uniform(0.07, 0.1) * np.clip((y_lim - Y) / (y_lim - y_ap) * 1.6, 0, 1) ** 0.6
        inside = lung & (Y < y_lim)
        air = (inside & (dist < depth)).astype(np.float32)
        line = inside & (np.abs(dist - depth) < 0.006) & (depth > 0.01)
        return Sign(boxes=[air], air=air, line=line.astype(np.float32))


DRAWN_FINDINGS = list(FINDINGS)
PADCHEST_TERMS = {name: list(spec.terms) for name, spec in FINDINGS.items()}
