"""The drawn findings: one spec per finding, holding everything the sample world knows about it.

A spec is a Finding subclass registered with @drawn. It carries
- PadChest: its taxonomy terms (`terms`), how one occurrence samples its parameters (`sample`), its localizations
  (`localizations`) and its stemmed Spanish report sentence (`spanish`, `spanish_side`);
- OpenI: its findings sentence, impression, MeSH major and MeSH automatic term (`sentences`), and whether it is a
  focal airspace opacity (`airspace`);
- NIH: its finding name in Data_Entry's Finding Labels (`nih`) and in the box list (`nih_box`), None for a finding
  NIH does not label (devices);
- the radiograph: where its sign sits (`layer`), the heart size it implies (`cardiothoracic_ratio`) and its drawing
  on a frontal view (`draw`, returning a Sign: ground-truth box masks, density layers, pleural fluid / air / visceral
  line) and on a lateral view (`draw_lateral`: a Sign without boxes, as a lateral is never scored for localization).

One finding of a study is a dict {"name", "side", "terms", and the parameters its spec samples (zone, route, leads,
count, size)}. Adding a drawn finding is adding one spec to this file. The registration order is DRAWN_FINDINGS, the
order in which a study draws its findings' random numbers: reordering or inserting specs changes every world. Specs
registered with @nih_only (infiltration, pneumonia) are drawn on NIH images only, after the shared ones, so the
PadChest and OpenI parts do not depend on them; SPECS holds both kinds, NIH_FINDINGS the names NIH images draw from.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

from sample_world.geometry import polyline_layer, side_sign, smooth, spline

# Where a sign sits, from the heart out to the lines and devices on top. draw_chest draws the findings layer by layer
# (in list order within a layer), which fixes the order of their random numbers and of their boxes.
LAYERS = ("heart", "pleural fluid", "pleural air", "lung", "device")

FINDINGS = {}  # drawn in every source, in registration order
NIH_ONLY = {}  # drawn on NIH images only


def drawn(cls):
    """Class decorator: registers one instance of a finding spec under its name, in definition order."""
    assert cls.layer in LAYERS, cls.layer
    FINDINGS[cls.name] = cls()
    return cls


def nih_only(cls):
    """Class decorator: registers a finding that only the NIH part draws (it has no PadChest terms or OpenI text)."""
    assert cls.layer in LAYERS and cls.nih, cls.name
    NIH_ONLY[cls.name] = cls()
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
    nih = None  # NIH's name in Data_Entry's Finding Labels; None: NIH does not label it and never draws it
    nih_box = None  # NIH's name in BBox_List_2017 (Infiltration is 'Infiltrate' there), for the eight box findings

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

    def draw_lateral(self, rng, profile, f):
        """The Sign of finding f on a lateral view (a lateral.Profile), without boxes; by default nothing shows (a
        small pneumothorax, a heart size the anatomy draws)."""
        return Sign(boxes=[])


def sample_findings(rng, normal_fraction, prevalence, names=None):
    """One study's findings: a list of finding dicts in the order of `names` (default DRAWN_FINDINGS); empty list =
    normal study."""
    if rng.random() < normal_fraction:
        return []
    names = list(FINDINGS) if names is None else names
    while True:
        chosen = [n for n in names if rng.random() < prevalence]
        if chosen:
            break
    findings = []
    for name in chosen:
        f = {"name": name, "side": str(rng.choice(["right", "left"]))}
        f.update(SPECS[name].sample(rng))
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
    nih = nih_box = "Atelectasis"

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

    def draw_lateral(self, rng, profile, f):
        x0, y0 = profile.lung_point(rng, f["zone"])
        length, ang = rng.uniform(0.14, 0.2), np.deg2rad(rng.uniform(-15, 15))
        dx, dy = length / 2 * np.cos(ang), length / 2 * np.sin(ang)
        band = polyline_layer(profile.h, profile.w, [(x0 - dx, y0 - dy), (x0 + dx, y0 + dy)],
                              rng.uniform(0.022, 0.03) * profile.w) * (profile.lung > 0)
        return Sign(boxes=[], density=[(0.25, smooth(band, 0.002 * profile.px))])


@drawn
class Cardiomegaly(Finding):
    """An enlarged heart: the anatomy draws the heart with this spec's cardiothoracic ratio."""
    name = "cardiomegaly"
    terms = ("cardiomegaly",)
    layer = "heart"
    spanish = "cardiomegali"
    cardiothoracic_ratio = (0.58, 0.66)
    nih = nih_box = "Cardiomegaly"

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

    def draw_lateral(self, rng, profile, f):
        svc = (profile.hcx + rng.uniform(0.0, 0.03), profile.hcy - profile.hb - rng.uniform(0.0, 0.03))
        if f["route"] == "jugular":
            pts = [(profile.neck_x, 0.0), (profile.neck_x + 0.02, profile.y_ap)]
        else:
            pts = [(profile.front_x + 0.04, profile.y_ap - 0.02), (profile.front_x + 0.12, profile.y_ap + 0.05)]
        line = polyline_layer(profile.h, profile.w, spline(pts + [svc], 60), rng.uniform(0.015, 0.018) * profile.w)
        return Sign(boxes=[], density=[(0.5, line)])


@drawn
class PleuralEffusion(Finding):
    """Meniscus-shaped fluid filling a lung base, higher laterally."""
    name = "pleural effusion"
    terms = ("pleural effusion", "loculated pleural effusion")
    layer = "pleural fluid"
    spanish = "derram pleural"
    spanish_side = True
    airspace = True
    nih = nih_box = "Effusion"

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

    def draw_lateral(self, rng, profile, f):
        # fluid gathers in the posterior costophrenic sulcus first: the meniscus rises towards the back
        depth = (0.15 if f.get("size", "small") == "moderate" else 0.1) + rng.uniform(-0.02, 0.02)
        back = np.clip((profile.X - profile.hcx) / (profile.spine_x - profile.hcx), 0, 1)
        fluid = profile.lung * (profile.Y > profile.dome - depth * back ** 1.5)
        return Sign(boxes=[], fluid=fluid)


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

    def draw_lateral(self, rng, profile, f):
        # seen edge-on on the anterior chest wall; the lead runs down into the right ventricle, anterior and low
        h, w = profile.h, profile.w
        gx, gy = profile.front_x + rng.uniform(0.03, 0.05), profile.y_ap + rng.uniform(0.05, 0.1)
        generator = smooth(rectangle_layer(h, w, gx, gy, rng.uniform(0.04, 0.055), rng.uniform(0.07, 0.09),
                                           np.deg2rad(rng.uniform(-15, 15))), 0.004 * profile.px)
        tip = (profile.hcx - 0.5 * profile.ha, profile.hcy + 0.4 * profile.hb)
        pts = spline([(gx, gy), (gx + 0.08, gy + 0.05), (profile.hcx, profile.hcy - profile.hb), tip], 60)
        return Sign(boxes=[], density=[(0.45, polyline_layer(h, w, pts, 0.011 * w)), (0.9, generator)])


@drawn
class Mass(Finding):
    """A lobulated opacity (overlapping discs) larger than a nodule, more often in the upper zones."""
    name = "mass"
    terms = ("mass", "pulmonary mass")
    spanish = "mas pulmonar"
    airspace = True
    nih = nih_box = "Mass"

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
        blob = lobulated(rng, chest, x0, y0, rng.uniform(0.06, 0.085))
        return Sign(boxes=[blob], density=[(0.4, smooth(blob, 0.003 * chest.px))])

    def draw_lateral(self, rng, profile, f):
        x0, y0 = profile.lung_point(rng, f["zone"])
        blob = lobulated(rng, profile, x0, y0, rng.uniform(0.06, 0.085))
        return Sign(boxes=[], density=[(0.35, smooth(blob, 0.003 * profile.px))])


@drawn
class Nodule(Finding):
    """One round opacity, or two or three of them (multiple nodules), in one lung zone."""
    name = "nodule"
    terms = ("nodule", "multiple nodules")
    spanish = "nodul pulmonar"
    airspace = True
    nih = nih_box = "Nodule"

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

    def draw_lateral(self, rng, profile, f):
        density = []
        for _ in range(f.get("count", 1)):
            x0, y0 = profile.lung_point(rng, f["zone"])
            blob = disc(profile, x0, y0, rng.uniform(0.026, 0.034)).astype(np.float32)
            density.append((0.4, smooth(blob, 0.003 * profile.px)))
        return Sign(boxes=[], density=density)


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

    def draw_lateral(self, rng, profile, f):
        # down the oesophagus in front of the spine, through the diaphragm, forwards into the stomach
        x_back = profile.spine_x - rng.uniform(0.08, 0.1)
        below = profile.diaphragm_at(x_back) + rng.uniform(0.03, 0.05)
        pts = spline([(profile.neck_x + 0.03, 0.0), (x_back + 0.01, profile.y_ap + 0.1), (x_back, profile.hcy),
                      (x_back - 0.02, below), (profile.hcx, below + rng.uniform(0.04, 0.07))], 80)
        tube = polyline_layer(profile.h, profile.w, pts, rng.uniform(0.015, 0.019) * profile.w)
        return Sign(boxes=[], density=[(0.55, tube)])


@drawn
class Pneumothorax(Finding):
    """A rim of air without lung markings along the apex and lateral chest wall, tapering downwards, bounded by a
    visible visceral pleural line."""
    name = "pneumothorax"
    terms = ("pneumothorax",)
    layer = "pleural air"
    spanish = "neumotorax"
    spanish_side = True
    nih = nih_box = "Pneumothorax"

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


def lobulated(rng, chest, x0, y0, r):
    """Bool-valued float mask of a lobulated opacity: three overlapping discs of about radius r around (x0, y0)."""
    blob = np.zeros((chest.h, chest.w), np.float32)
    for _ in range(3):
        ox, oy = rng.uniform(-0.35, 0.35, 2) * r
        blob = np.maximum(blob, disc(chest, x0, y0, r * rng.uniform(0.65, 0.85), ox, oy))
    return blob


def patches(rng, chest, x0, y0, spread):
    """Float mask of a patchy opacity: five to eight small discs scattered within `spread` of (x0, y0)."""
    patch = np.zeros((chest.h, chest.w), np.float32)
    for _ in range(int(rng.integers(5, 9))):
        ox, oy = rng.uniform(-1, 1, 2) * spread
        patch = np.maximum(patch, disc(chest, x0, y0, rng.uniform(0.018, 0.03), ox, oy))
    return patch


# NIH-only specs: drawn after the shared ones (their random numbers come last), labelled in Data_Entry only


@nih_only
class Infiltration(Finding):
    """Patchy, ill-defined airspace opacity in one lung zone."""
    name = "infiltrates"
    airspace = True
    nih, nih_box = "Infiltration", "Infiltrate"

    def sample(self, rng):
        return {"terms": [], "zone": str(rng.choice(["upper", "middle", "lower"], p=[0.25, 0.35, 0.4]))}

    def draw(self, rng, chest, f):
        x0, y0 = chest.lung_point(rng, f["side"], f["zone"], lateral=(0.35, 0.6))
        patch = patches(rng, chest, x0, y0, 0.06) * (chest.lung > 0)
        return Sign(boxes=[patch], density=[(0.22, smooth(patch, 0.005 * chest.px))])

    def draw_lateral(self, rng, profile, f):
        x0, y0 = profile.lung_point(rng, f["zone"])
        patch = patches(rng, profile, x0, y0, 0.06) * (profile.lung > 0)
        return Sign(boxes=[], density=[(0.2, smooth(patch, 0.005 * profile.px))])


@nih_only
class Pneumonia(Finding):
    """Lobar consolidation of an upper or middle zone: the outer part of the lung between two wavy borders filled in
    densely, with dark air bronchograms. Not at the base, where it would pass for an effusion at 200 pixels."""
    name = "pneumonia"
    airspace = True
    nih = nih_box = "Pneumonia"

    def sample(self, rng):
        return {"terms": [], "zone": str(rng.choice(["upper", "middle"], p=[0.4, 0.6]))}

    def draw(self, rng, chest, f):
        s = side_sign(f["side"])
        top = chest.y_ap + (0.05 if f["zone"] == "upper" else 0.3 * (chest.y_d[s] - chest.y_ap))
        top += rng.uniform(0, 0.04)
        bottom = top + rng.uniform(0.13, 0.19)
        wave = 0.012 * np.sin(chest.X * rng.uniform(25, 40) + rng.uniform(0, 6))
        inside = (chest.Y > top + wave) & (chest.Y < bottom - wave) & (s * (chest.X - chest.cx) > 0.12)
        region = chest.lungs[s] * (1 - chest.mediastinum) * inside
        return Sign(boxes=[region], density=self.consolidation(rng, chest, region, (top + bottom) / 2, s))

    def draw_lateral(self, rng, profile, f):
        # the upper lobe above the oblique fissure (high at the back, down to the front of the diaphragm), or the
        # middle lobe in front, just below the horizontal fissure
        x_front, x_back = profile.front_x + 0.1, profile.spine_x
        fissure = profile.y_ap + 0.2 + (profile.diaphragm_at(x_front) - profile.y_ap - 0.2) * np.clip(
            (x_back - profile.X) / (x_back - x_front), 0, 1)
        if f["zone"] == "upper":
            inside = profile.Y < fissure - 0.08
        else:
            inside = (profile.Y < fissure) & (profile.Y > profile.hcy - profile.hb - 0.1) & (profile.X < profile.hcx)
        region = profile.lung * inside
        return Sign(boxes=[], density=self.consolidation(rng, profile, region, float(np.mean(fissure)), 1))

    @staticmethod
    def consolidation(rng, chest, region, y0, s):
        """Density layers of a consolidated region: a dense fill, less a few dark branching air bronchograms."""
        bronchi = np.zeros((chest.h, chest.w), np.float32)
        xs, ys = np.nonzero(region.T > 0.5)
        if len(xs):
            for _ in range(3):
                k = int(rng.integers(len(xs)))
                x1, y1 = (xs[k] + 0.5) / chest.w, (ys[k] + 0.5) / chest.h
                start = (x1 - s * rng.uniform(0.03, 0.06), y0 + 0.5 * (y1 - y0))
                bronchi = np.maximum(bronchi, polyline_layer(chest.h, chest.w, [start, (x1, y1)], 0.008 * chest.w))
        return [(0.32, smooth(region, 0.004 * chest.px)), (-0.12, bronchi * region)]


DRAWN_FINDINGS = list(FINDINGS)
SPECS = {**FINDINGS, **NIH_ONLY}
NIH_FINDINGS = [name for name, spec in SPECS.items() if spec.nih]
PADCHEST_TERMS = {name: list(spec.terms) for name, spec in FINDINGS.items()}
