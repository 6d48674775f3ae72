"""A rule-based radiology report labeler for the 22 classes: a pure-Python drop-in for the CheXpert labeler.

Input: a CSV with one report per row and no header (the CheXpert labeler's input; reports of any length, a
UTF-8 byte-order mark ignored). Output: the report, then one column per class with 1 (positive), 0 (negative),
-1 (uncertain) or blank (not mentioned), written to a temporary file and renamed when complete.

How it reads a report: mention phrases (with synonyms and abbreviations) are found with compiled regexes;
each mention is negated or made uncertain by a trigger in the same clause (a trigger before it, like 'no',
'without', 'may', or after it, like 'has resolved', 'cannot be excluded'). A hedged negation ('cannot exclude',
'not ruled out', 'difficult to exclude') is uncertain, also after a negation in its clause. Clauses end at
sentence punctuation and at words that turn the sentence ('but', 'however', 'although', 'there is', ...).
A predicate that ends a long clause ('is not seen either on ...', 'would be a consideration', 'are smaller and not
definitely seen', 'cannot be excluded') reaches the subject the clause opens with (its first mention and those
listed with it), when no other verb comes between; 'not seen on the lateral view' is no negation. A finding that
depends on the clinical picture ('correlate clinically for', 'in the appropriate clinical setting', 'is in the
differential') is uncertain, as in the CheXpert labeler's patterns.
A statement that a structure is normal ('heart size is normal', 'the lungs are clear') is a negative mention of
the findings about it. Aggregation per class follows CheXpert: any positive -> 1, else any uncertain -> -1, else
0 when only negated mentions. 'other findings' is set only when no named class is positive or uncertain, and
'normal' when nothing is positive or uncertain at all; a report without words is all blank. The time is linear in
the report's length (each clause's triggers are found once).

    python -m data.labels.report_labeler --reports IN.csv --out OUT.csv
    python -m data.labels.openi --evaluate-labeler NLMCXR_reports.tgz    # P/R/F1 against OpenI's MeSH codes
"""

import argparse
import bisect
import csv
import os
import re
import sys
import time

import numpy as np

from data.classes import CLASSES
from data.commands import Parser, run_main
from data.errors import EnvironmentFault, InputError
from data.files import atomic_path

# Mention phrases per class: lower-case regexes matched on word boundaries; where two start at the same
# word the first listed wins, so longer phrases go first. The classes follow the PadChest taxonomy (e.g.
# hyperinflation and opacity are 'other findings', as 'hyperinflated lung' and 'increased density' are there).
MENTIONS = {
    "aortic elongation": [
        r"(?:tortu\w+|torturous|ectatic|ectasia|unfold\w*|elongat\w+)(?:\W+\w+){0,4}?\W+aort\w*",
        r"aort\w*(?:\W+\w+){0,4}?\W+(?:tortu\w+|torturous|ectatic|ectasia|unfold\w*|elongat\w+)",
        r"(?:enlarged|prominent) (?:thoracic )?aort\w*", r"aortic (?:knob|arch) (?:is )?(?:enlarged|prominent)",
    ],
    "atelectasis": [r"atelecta\w*", r"collapse of the (?:\w+ )?(?:lobe|lung)", r"(?:lobar|lung) collapse"],
    "cardiomegaly": [
        r"cardiomegaly", r"cardiac enlargement", r"enlarge\w* (?:of the )?(?:heart|cardiac (?:silhouette|shadow))",
        r"(?:heart|cardiac silhouette|cardiac shadow|heart size|cardiac size)(?: is| are| remains| appears| has)?"
        r"(?: mildly| moderately| markedly| severely| slightly| again| still| stably| minimally)? enlarged",
        r"enlarged (?:\w+ )?(?:heart|cardiac (?:silhouette|shadow|size))", r"cardiomegal\w*",
        r"(?:heart|cardiac silhouette)(?: is| appears)? (?:mildly |moderately |markedly )?large", r"large heart",
    ],
    "catheter": [
        r"picc", r"picc line", r"catheters?", r"central (?:venous )?lines?", r"(?:ij|subclavian|jugular) lines?",
        r"(?:port|portacath|port-a-cath|mediport)", r"swan[- ]ganz", r"dialysis catheter", r"venous access",
        r"tip (?:\w+ ){0,3}(?:svc|superior vena cava|cavoatrial junction|brachiocephalic)",
    ],
    "copd signs": [r"copd", r"chronic obstructive", r"obstructive (?:pulmonary|lung|airway)s? disease"],
    "pleural effusion": [
        r"(?<!pericardial )(?:pleural )?effusions?", r"pleural fluid",
        r"fluid in the (?:\w+ )?(?:pleural space|fissure)",
        r"hydropneumothora\w*", r"hemothora\w*", r"fluid (?:layering|collection)",
    ],
    "electrical device": [
        r"pacemakers?", r"pacers?", r"aicd", r"icd", r"defibrillators?", r"pacing (?:leads?|wires?|device)",
        r"(?:cardiac|dual[- ]chamber|single[- ]chamber|dual[- ]lead) (?:device|generator|leads?)", r"generator",
        r"cardiac xxxx",  # OpenI's anonymizer blanked 'pacemaker' to XXXX: 17 of its 24 'cardiac XXXX' are devices
        r"(?:nerve|vagal) stimulator", r"loop recorder",
    ],
    "emphysema": [r"(?<!subcutaneous )(?<!mediastinal )emphysem\w*", r"bullous"],
    "heart insufficiency": [r"chf", r"(?:congestive )?heart failure", r"cardiac (?:failure|decompensation)"],
    "infiltrates": [
        r"infiltrat\w*", r"consolidat\w*", r"air[- ]?space (?:disease|process|consolidation)",
        r"alveolar (?:infiltrat\w+|process|disease)", r"interstitial (?:lung )?disease",
        r"interstitial (?:pneumonitis|infiltrat\w*)",
    ],
    # a tumour or neoplasm is a diagnosis, not the finding: PadChest keeps its diagnoses (lung metastasis, lepidic
    # adenocarcinoma) apart from 'mass', and so do OpenI's indexers ('nodules consistent with neoplasm': Nodule only)
    "mass": [r"mass lesions?", r"mass(?:es)?", r"mass-?like"],
    "nodule": [r"nodules?", r"noduli?"],
    "nsg tube": [
        r"(?:ng|og|nasogastric|orogastric|feeding|dobhoff|dobbhoff|enteric|gastric|esophagogastric|nasoenteric)"
        r" (?:suction )?(?:tubes?|catheter)", r"(?:ng|og|nasogastric|orogastric) (?:catheter|line)",
    ],
    "pneumonia": [r"pneumonias?", r"pneumonitis", r"bronchopneumonia"],
    "pneumothorax": [r"(?<!hydro)(?<!hemo)pneumothora\w*", r"hydropneumothora\w*", r"hemopneumothora\w*", r"ptx",
                     r"pleural air(?: collection)?", r"air collection"],
    "pulmonary edema": [
        # soft-tissue and subcutaneous edema are outside the lungs ('other findings')
        r"(?<!soft tissue )(?<!soft-tissue )(?<!subcutaneous )(?:pulmonary |interstitial |alveolar )?o?edema",
        r"fluid overload", r"volume overload",
    ],
    "pulmonary fibrosis": [r"(?:pulmonary |interstitial )?fibros\w+", r"fibrotic (?:changes?|lung disease)"],
    "surgery": [
        r"sternotomy(?: wires?)?", r"median sternotomy", r"sternal (?:wires?|sutures?)", r"(?:surgical )?clips?",
        r"(?:surgical )?sutures?", r"cabg", r"bypass graft\w*", r"mastectomy", r"lobectomy", r"pneumonectomy",
        r"thoracotomy", r"(?:spinal |cervical |thoracic )?fusion (?:hardware|rods?|plate)", r"(?:spinal )?fusion",
        r"post ?(?:operative|surgical)", r"postoperative", r"prosthe\w+", r"hardware",
        r"(?:breast )?implants?", r"stents?", r"wedge resection", r"resection",
    ],
    "thoracic cage deformation": [
        r"(?:dextro|levo|rotoscolio|rotary )?scolio\w+", r"(?:dextro|levo)curvature", r"(?:spine|spinal) curvature",
        r"curvature of the (?:\w+ )?spine", r"kyphos\w+", r"kyphotic", r"kyphoscolio\w+",
        r"pectus (?:excavatum|carinatum)", r"funnel chest", r"chest wall deformity", r"thoracic cage deformit\w+",
        r"cervical ribs?",
    ],
    "tuberculosis": [r"tuberculo\w+", r"tb", r"mycobacteri\w+"],
    # findings outside the named classes: only to tell 'other findings' and 'normal' apart
    "other findings": [
        r"opacit\w+", r"densit\w+", r"granulom\w+", r"calcifi\w+", r"degenerative", r"spondylo\w+", r"osteophyt\w+",
        r"scar\w*", r"cicatri\w+", r"hyperinflat\w+", r"hyperexpan\w+", r"hyperdisten\w+", r"hyperaera\w+",
        r"(?:low|decreased|reduced) lung volumes?", r"hypoinflat\w+", r"hypoventilat\w+", r"(?:hiatal|hiatus) hernia",
        r"hernia", r"fractur\w+", r"deformit\w+", r"congestion", r"(?:vascular|interstitial) (?:prominence|markings)",
        r"prominen\w+ (?:of the )?(?:interstitial|bronchovascular|vascular) markings", r"bronchiectas\w+",
        r"thicken\w+", r"blunt\w+", r"elevat\w+ (?:of the )?(?:right |left )?(?:hemi)?diaphragm\w*",
        r"(?:hemi)?diaphragm\w* (?:is |are )?elevat\w+", r"eventration", r"flatten\w+", r"atheroscleros\w+",
        r"atherosclerotic", r"lucenc\w+", r"cysts?", r"cystic", r"bullae?", r"cavit\w+", r"adenopathy",
        r"lymphadenopathy", r"(?:enlarged|prominent) (?:\w+ )?(?:hil\w+|lymph nodes?|mediastin\w+)",
        r"(?:hil\w+|mediastin\w+) (?:is |are )?(?:enlarged|prominent|widened)", r"widen\w+ (?:of the )?mediastin\w+",
        r"pneumoperitoneum", r"free air", r"subcutaneous emphysema", r"pneumomediastinum", r"foreign bod\w+",
        r"(?:endotracheal|tracheostomy|et|chest|thoracostomy) tubes?", r"tracheostomy", r"drain\w*",
        r"(?:vp )?shunt(?: tubing| catheter)?", r"osteopeni\w+", r"osteoporo\w+", r"arthriti\w+",
        r"sarcoid\w*", r"metasta\w+", r"tumou?rs?", r"neoplas\w+", r"lesions?", r"abnormalit\w+", r"aneurysm\w*",
        r"dilat\w+", r"shift",
        r"volume loss", r"effacement", r"azygos lobe", r"nipple shadows?", r"epicardial fat", r"cardiac monitor",
        r"(?:monitor|ecg|ekg) leads", r"wires?", r"hyperlucen\w+", r"bronchitis", r"airway disease",
        r"(?:peribronchial|bronchial) (?:cuffing|wall thickening)", r"kerley", r"cephalization",
        r"pericardial effusions?", r"(?:soft[- ]tissue|subcutaneous) o?edema",
    ],
}

# Words that negate a mention after them in the same clause
NEGATION_BEFORE = [
    r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"absence of", r"absent", r"resolved",
    r"resolution of", r"removal of", r"removed", r"rule out", r"ruled out", r"r/o", r"neither", r"nor",
    r"no evidence of", r"no signs? of", r"there is no", r"there are no", r"exclude[ds]?", r"negative",
    r"interval clearing of", r"clearing of",
]
# ... and before them (the mention comes first): 'pneumothorax has resolved'
NEGATION_AFTER = [
    r"(?:is |are |has |have |has been |have been |was |were )?"
    r"(?:resolved|removed|cleared|clear|absent|excluded|ruled out)",
    r"(?:is |are |was |were )?(?:not (?:seen|identified|present|visualized|evident|appreciated|demonstrated))",
    r"(?:is |are )?no longer (?:seen|present|visualized|identified|evident|appreciated|demonstrated)?",
    r"(?:is |are )?not",
]
# A negation hedged: 'cannot exclude', 'cannot be entirely excluded', 'not ruled out', 'difficult to exclude', 'to
# rule out'. It holds a negation trigger ('exclude', 'not', 'rule out'); the hedge wins over the trigger it holds.
HEDGED_NEGATION = (r"(?:cannot|can not|could not|may not|not|difficult to|hard to|unable to|to|should)"
                   r"(?: be)?(?: \w+ly)?(?: be)? (?:exclude[ds]?|rule[ds]? out)")
UNCERTAIN_BEFORE = [
    HEDGED_NEGATION, r"may", r"might", r"could", r"possibl[ey]", r"questionabl[ey]", r"question of",
    r"suggest\w*", r"suspicious for", r"suspect\w*", r"concern\w* for", r"worrisome for", r"differential",
    r"versus", r"vs\.?", r"consider\w*", r"equivocal", r"vague", r"cannot", r"presumed",
    r"either", r"favor\w*", r"evaluate for", r"assess for",
    # the finding depends on the clinical picture: CheXpert's 'correlate clinically for XXX' is uncertain, and 'in the
    # appropriate clinical setting this is compatible with pneumonia' says the same
    r"correlat\w*(?: clinically)? (?:for|with)", r"clinical correlation (?:for|with)",
    r"in (?:the |an )?(?:appropriate|correct|right|proper|given) clinical (?:setting|context)",
]
# hedges that override an earlier negation in the clause ('no effusion, possibly atelectasis'); weaker ones
# like 'suggest' do not ('no opacity to suggest pneumonia')
STRONG_UNCERTAIN = [HEDGED_NEGATION, r"may", r"might", r"could", r"possibl[ey]", r"versus", r"vs\.?"]
# 'no change in the effusion' and 'without significant interval change of mild atelectasis' report the finding
PSEUDO_NEGATION = (r"\b(?:no (?:\w+ )?|without (?:\w+ ){0,2})(?:change|increase|decrease|progression)\b"
                   r"|\bnot (?:\w+ )?changed\b")
UNCERTAIN_AFTER = [
    # the passive hedges; 'cannot exclude' after a mention hedges the next one ('no effusion, cannot exclude X')
    r"(?:is |are |was |were )?(?:cannot|can not|could not|may not|not|should)(?: be)?(?: \w+ly)?(?: be)? "
    r"(?:excluded|ruled out)", r"(?:is |are )?difficult to (?:\w+ly )?exclude(?=\W*$)",
    r"(?:is |are )?(?:possible|suspected|questioned|likely|not excluded|versus|vs\.?)",
    r"(?:could|may|might|would) (?:be|represent)", r"(?:is |are )?(?:also )?in the differential",
]
# A predicate at the end of a long clause, about the clause's subject: the mention the clause opens with and those
# listed with it ('X and Y', 'X or Y', 'X/Y'), with no other verb between them and the predicate. 'Pneumonia seen on
# CT examination dated XXXX (not seen on prior chest x-XXXX) is not seen either on XXXX chest x-XXXX' is negative;
# 'A pneumonia superimposed on changes of emphysema ... would be a consideration' hedges the pneumonia, not the
# emphysema. A view that does not show a finding ('not seen on the lateral view') says it shows on the other one.
_SEEN = r"(?:seen|identified|visualized|evident|present|appreciated|demonstrated|visible)"
_NOT_ON_A_VIEW = (r"(?!(?:\W+(?:either|well|xxxx|" + _SEEN[3:-1] + r"))*\W+on (?:the |this |today's )?"
                  r"(?:pa|ap|lateral|frontal|posteroanterior|oblique)"
                  r" (?:view|projection|image|radiograph|film|exam)s?\b)")
LATE_NEGATION = (r"(?:is|are|was|were|has been|have been)(?: xxxx| either| now)? (?:not|no longer)(?: xxxx| either)? "
                 + _SEEN + r"\b" + _NOT_ON_A_VIEW)
# CheXpert reads 'XXX are not clearly seen' as uncertain; 'smaller and not definitely seen' is the same
LATE_UNCERTAIN = (r"(?:(?:would|could|may|might) be (?:a |another )?(?:consideration|considered)"
                  r"|(?:is|are) (?:also )?in the differential|(?:is|are) (?:also )?(?:a |another )?consideration"
                  r"|(?:cannot|can not|could not|may not|not) (?:be )?(?:\w+ly )?(?:be )?(?:excluded|ruled out)"
                  r"|(?:is|are|was|were)(?: [\w-]+ and)? not (?:definitely|clearly|well|convincingly) " + _SEEN
                  + r")\b" + _NOT_ON_A_VIEW)
# joins a mention to the one before it in a subject: nothing, a conjunction, a slash or a comma, and up to two words
SUBJECT_LIST = r"(?:\s*(?:,|/|and/or|and|or)?\s*)(?:[\w-]+\s+){0,2}?"
COPULA = r"\b(?:(?P<verb>is|are|was|were|has|have|would|could|may|might|can)|cannot|not)\b"  # a predicate starts at one

# Statements that a structure is normal are negative mentions of the findings about that structure, as in the
# CheXpert labeler ('heart size is normal': cardiomegaly 0). Plain statements only: 'upper limits of normal',
# 'borderline', 'normal to mildly enlarged' and 'not clear' say nothing. They set 0 and never claim text.
_HEART = r"(?:heart|cardiac|cardiomediastinal|cardio mediastinal)(?: (?:size|silhouettes?|contours?|shadow))?"
_AND_MORE = (r"(?:(?:,? and|,) (?:the )?(?:mediastin\w+|cardiomediastinal|pulmonary|hilar|xxxx)"
             r"(?: (?:size|silhouettes?|contours?|vascularity|vasculature|xxxx))?){0,3}")
_IS = r"(?: (?:is|are|appears?|remains?|seems?))?(?: (?:grossly|overall|otherwise|essentially|again|still|now))?"
_NOT_LARGE = r"(?!(?:\W+\w+){0,4}?\W+(?:enlarge\w*|large|borderline|upper|cardiomegaly)\b)"
NORMAL_STATEMENTS = {
    ("cardiomegaly",): [
        _HEART + _AND_MORE + _IS + r"(?: of)? (?:normal|within (?:normal limits|limits of normal)|unremarkable|"
        r"not enlarged)\b" + _NOT_LARGE,
        r"(?<!upper )(?<!high )(?<!top )(?<!borderline )(?<!of )normal (?:\w+ )?(?:heart|cardiac|cardiomediastinal)"
        + _NOT_LARGE,
        r"normal size (?:and \w+ )?of the (?:heart|cardiac)",
    ],
    ("infiltrates", "pneumonia", "pulmonary edema"): [
        # both lungs: 'the left lung is clear' says nothing of the right
        r"lungs" + _IS + r"(?: (?:normally|well|fully|inflated|expanded|and|bilaterally)){0,3} clear",
        r"clear (?:and (?:well[- ])?expanded )?lungs", r"(?:well[- ])?expanded and clear lungs",
    ],
    ("pulmonary edema",): [r"pulmonary (?:vascularity|vasculature)" + _IS
                           + r" (?:normal|within normal limits|unremarkable)", r"normal pulmonary vascula\w+"],
    ("pleural effusion", "pneumothorax"): [r"pleural spaces?" + _IS + r" (?:clear|normal|unremarkable)"],
}

# Where a negation or uncertainty stops: sentence ends and words that turn the sentence
CLAUSE_BREAK = (
    r"(?<!\d)\.(?!\d)|[;:!?\n]|\b(?:but|however|although|though|whereas|except|otherwise|which|while|"
    r"apart from|aside from|there (?:is|are|has been|have been)|"
    r"and (?:a|an|the|mild|small|moderate|large|there)|with (?:a|an|the|mild|small|moderate|large|interval|"
    r"increas\w+|decreas\w+))\b"
)


def _alternation(phrases):
    return r"\b(?:" + "|".join(phrases) + r")\b"


MENTION_RE = [(c, re.compile(_alternation(p))) for c, p in MENTIONS.items()]
NEG_BEFORE_RE = re.compile(_alternation(NEGATION_BEFORE))
UNC_BEFORE_RE = re.compile(_alternation(UNCERTAIN_BEFORE))
STRONG_UNC_RE = re.compile(_alternation(STRONG_UNCERTAIN))
PSEUDO_NEG_RE = re.compile(PSEUDO_NEGATION)
NEG_AFTER_RE = re.compile(r"\W*(?:" + "|".join(NEGATION_AFTER) + r")\b" + _NOT_ON_A_VIEW)
# the hedge after a list covers its items: 'atelectasis or infiltrate cannot be ruled out'
UNC_AFTER_RE = re.compile(r"\W*(?:(?:or|and/or) (?:[\w-]+ ){1,4}?)?(?:" + "|".join(UNCERTAIN_AFTER) + r")\b")
BREAK_RE = re.compile(CLAUSE_BREAK)
LATE_RE = re.compile(r"\b(?:(?P<neg>" + LATE_NEGATION + r")|" + LATE_UNCERTAIN + r")")
SUBJECT_LIST_RE = re.compile(SUBJECT_LIST)
COPULA_RE = re.compile(COPULA)
CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
NAMED = [i for i, c in enumerate(CLASSES) if c not in ("normal", "other findings")]
NOT_MENTIONED = -2  # internal marker for a blank cell
NORMAL_STATEMENT_RE = [([CLASS_INDEX[c] for c in classes], re.compile(_alternation(p)))
                       for classes, p in NORMAL_STATEMENTS.items()]
LETTER_RE = re.compile(r"[^\W\d_]")


def _outside(matches, spans):
    """The spans of `matches` that lie inside none of `spans` (both in text order, each non-overlapping): the
    negation trigger 'exclude' inside the hedge 'cannot exclude' is no negation."""
    out, k = [], 0
    for m in matches:
        a, b = m.span()
        while k < len(spans) and spans[k][1] < b:
            k += 1
        if not (k < len(spans) and spans[k][0] <= a):
            out.append((a, b))
    return out


class _Scope:
    """The triggers of one clause, found once, so that a mention looks back with a binary search instead of
    re-reading the clause: a report's cost stays linear in its length however many mentions a clause holds.

    A mention sees the triggers that end at or before it. Triggers inside a pseudo-negation ('no change in')
    that ends before the mention are not triggers; a pseudo-negation that reaches past the mention's start
    ('no effusion change') does not hide them."""

    def __init__(self, text, start, end):
        self.end = end
        self.pseudo = [m.span() for m in PSEUDO_NEG_RE.finditer(text, start, end)]
        unc = [m.span() for m in UNC_BEFORE_RE.finditer(text, start, end)]
        self.neg = self._split(_outside(NEG_BEFORE_RE.finditer(text, start, end), unc))
        self.unc = self._split(unc)
        self.strong = self._split([m.span() for m in STRONG_UNC_RE.finditer(text, start, end)])
        self.pseudo_ends = [b for _, b in self.pseudo]
        self.text, self.start, self._late, self._commas = text, start, None, None

    def late(self, pos):
        """(0 or -1, its start) from the clause-final predicate that the subject mention ending at pos is the subject
        of, or None. The first predicate after pos counts when no verb comes before it (found once per clause, on first
        use)."""
        if self._late is None:
            # every predicate starts at a verb or 'not': tried there only, anchored
            words = list(COPULA_RE.finditer(self.text, self.start, self.end))
            found = [(m.start(), late) for m in words if (late := LATE_RE.match(self.text, m.start(), self.end))]
            self._late = ([a for a, _ in found], [0 if m.group("neg") else -1 for _, m in found],
                          [m.start() for m in words if m.group("verb")])
        starts, values, verbs = self._late
        i = bisect.bisect_left(starts, pos)
        if i == len(starts):
            return None
        v = bisect.bisect_left(verbs, pos)
        return (values[i], starts[i]) if v == len(verbs) or starts[i] <= verbs[v] else None

    def comma(self, lo, hi):
        """Whether a comma lies in text[lo:hi] (the clause's commas found once, on first use)."""
        if self._commas is None:
            self._commas = [m.start() for m in re.finditer(",", self.text[self.start:self.end])]
        i = bisect.bisect_left(self._commas, lo - self.start)
        return i < len(self._commas) and self._commas[i] < hi - self.start

    def _split(self, spans):
        """(free spans, their ends, {pseudo index: spans inside it}): a span that overlaps a pseudo-negation
        is held apart."""
        free, inside, k = [], {}, 0
        for a, b in spans:
            while k < len(self.pseudo) and self.pseudo[k][1] <= a:
                k += 1
            if k < len(self.pseudo) and self.pseudo[k][0] < b:
                inside.setdefault(k, []).append((a, b))
            else:
                free.append((a, b))
        return free, [b for _, b in free], inside

    def _crossing(self, pos):
        """Index of the pseudo-negation that starts before pos and ends after it, or None."""
        k = bisect.bisect_right(self.pseudo_ends, pos)
        return k if k < len(self.pseudo) and self.pseudo[k][0] < pos else None

    def last_end(self, triggers, pos):
        """End of the last trigger that ends at or before pos, or -1."""
        free, ends, inside = triggers
        i = bisect.bisect_right(ends, pos)
        best = ends[i - 1] if i else -1
        k = self._crossing(pos) if inside else None
        for _, b in inside.get(k, ()):
            if b <= pos:
                best = max(best, b)
        return best

    def any_within(self, triggers, lo, hi):
        """Whether a trigger starts at or after lo and ends at or before hi."""
        free, _, inside = triggers
        i = bisect.bisect_left(free, (lo, -1))
        if i < len(free) and free[i][1] <= hi:
            return True
        k = self._crossing(hi) if inside else None
        return any(a >= lo and b <= hi for a, b in inside.get(k, ()))


def _mention_value(text, start, end, scope, late):
    """1, 0 or -1 for one mention at text[start:end] inside the clause `scope`; `late`: 0 or -1 from the clause-final
    predicate the mention is the subject of, or None."""
    if UNC_AFTER_RE.match(text, end, scope.end):
        return -1
    if NEG_AFTER_RE.match(text, end, scope.end):
        return 0
    if late is not None:
        return late
    neg = scope.last_end(scope.neg, start)
    unc = scope.last_end(scope.unc, start)
    if neg >= 0 and not (unc > neg and scope.any_within(scope.strong, neg, start)):
        return 0
    if unc >= 0:
        return -1
    return 1


def has_words(text):
    """Whether a report holds a letter: one that does not gives a labeler nothing to read."""
    return LETTER_RE.search(text) is not None


def label_report(text):
    """One report -> list of 22 values: 1, 0, -1, or NOT_MENTIONED (-2)."""
    out = [NOT_MENTIONED] * len(CLASSES)
    if not has_words(text):
        return out  # an empty or punctuation-only report says nothing, not 'normal'
    text = " ".join(text.lower().split())
    for columns, regex in NORMAL_STATEMENT_RE:
        if regex.search(text):
            for j in columns:
                out[j] = 0
    starts = [0] + [m.end() for m in BREAK_RE.finditer(text)]
    bounds = starts[1:] + [len(text)]
    scopes = {}
    # characters claimed by a named class's mention, so that 'pleural effusion' is not also 'other findings'
    taken = bytearray(len(text) + 1)
    mentions = []
    for cls, regex in MENTION_RE:
        j = CLASS_INDEX[cls]
        other = cls == "other findings"
        for m in regex.finditer(text):
            s, e = m.span()
            if other and (taken[s] or taken[e - 1]):
                continue
            if not other:
                taken[s:e] = b"\x01" * (e - s)
            mentions.append((s, e, j))
    # in text order, to tell a clause's subject: its first mention and those listed with it
    mentions.sort()
    clauses = [bisect.bisect_right(starts, s) - 1 for s, _, _ in mentions]
    subjects, clause, last_end = [], -1, 0
    for (s, e, _), k in zip(mentions, clauses):
        if k != clause:
            subject, clause, last_end = True, k, e
        else:
            if subject and s >= last_end:
                subject = SUBJECT_LIST_RE.fullmatch(text, last_end, s) is not None
            last_end = max(last_end, e)
        subjects.append(subject)
    mention_starts = [s for s, _, _ in mentions]
    for i, ((s, e, j), k) in enumerate(zip(mentions, clauses)):
        scope = scopes.get(k)
        if scope is None:
            scope = scopes[k] = _Scope(text, starts[k], bounds[k])
        late = scope.late(e) if subjects[i] else None
        if late is not None:
            # a mention after a comma and before the predicate is its own subject: 'X in the lobe, Y is not seen'
            last = bisect.bisect_left(mention_starts, late[1]) - 1
            late = None if last > i and not subjects[last] and scope.comma(e, mention_starts[last]) else late[0]
        v = _mention_value(text, s, e, scope, late)
        cur = out[j]
        # positive beats uncertain beats negative (CheXpert's aggregation)
        if cur == NOT_MENTIONED or v == 1 or (v == -1 and cur == 0):
            out[j] = v
    named = [out[i] for i in NAMED]
    o = CLASS_INDEX["other findings"]
    if any(v in (1, -1) for v in named):
        out[o] = NOT_MENTIONED if out[o] == NOT_MENTIONED else 0
    if not any(v in (1, -1) for v in named) and out[o] not in (1, -1):
        out[CLASS_INDEX["normal"]] = 1
    else:
        out[CLASS_INDEX["normal"]] = NOT_MENTIONED
    return out


def label_reports(texts, blank=0):
    """Many reports -> int8 array [n, 22]; not mentioned becomes `blank` (0 for the label CSVs)."""
    values = np.array([label_report(t) for t in texts], dtype=np.int8).reshape(len(texts), len(CLASSES))
    values[values == NOT_MENTIONED] = blank
    return values


# MeSH indexers code what a report asserts; measured on OpenI, counting 'uncertain' as negative agrees better
UNCERTAIN_POSITIVE = False


def evaluate(predicted, reference, classes=CLASSES, uncertain_positive=UNCERTAIN_POSITIVE):
    """Per-class and overall (micro) precision/recall/F1 of predicted labels against the reference (1 is
    positive; a predicted -1 counts as positive only with uncertain_positive). Returns a list of dicts:
    class, tp, fp, fn, precision, recall, f1, support."""
    pred = np.isin(predicted, (1, -1)) if uncertain_positive else predicted == 1
    ref = reference == 1
    rows = []

    def row(name, p, r):
        tp = int((p & r).sum())
        fp = int((p & ~r).sum())
        fn = int((~p & r).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"class": name, "tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec, "f1": f1,
                "support": tp + fn}

    for i, c in enumerate(classes):
        rows.append(row(c, pred[:, i], ref[:, i]))
    rows.append(row("overall (micro, 22 classes)", pred, ref))
    cx8 = [classes.index(c) for c in CHESTXRAY8_CLASSES]
    rows.append(row("overall (micro, ChestX-ray8's 9)", pred[:, cx8], ref[:, cx8]))
    return rows


# The classes the ChestX-ray8 paper scored its labeler on, and its P/R/F1 on OpenI (Table 2)
CHESTXRAY8_CLASSES = ["atelectasis", "cardiomegaly", "pleural effusion", "infiltrates", "mass", "nodule",
                      "normal", "pneumonia", "pneumothorax"]
CHESTXRAY8_F1 = {"atelectasis": 0.91, "cardiomegaly": 0.88, "pleural effusion": 0.87, "infiltrates": 0.80,
                 "mass": 0.52, "nodule": 0.75, "normal": 0.93, "pneumonia": 0.77, "pneumothorax": 0.86,
                 "overall (micro, ChestX-ray8's 9)": 0.90}


def format_table(rows):
    lines = [f"{'class':34s} {'P':>6s} {'R':>6s} {'F1':>6s} {'support':>8s}  ChestX-ray8 F1"]
    for r in rows:
        ref = CHESTXRAY8_F1.get(r["class"])
        lines.append(f"{r['class']:34s} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['support']:8d}"
                     + (f"  {ref:.2f}" if ref is not None else ""))
    return "\n".join(lines)


# A report may be any length: the csv module's default field limit (128 KB) would reject the whole file, and
# parselabelfile.py writes reports of any length. 2**31 - 1 fits a C long everywhere.
FIELD_LIMIT = 2**31 - 1


def read_report_csv(path):
    """CheXpert-labeler input: one report per row, no header, first column. A UTF-8 byte-order mark is not text."""
    limit = csv.field_size_limit(FIELD_LIMIT)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [row[0] if row else "" for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read reports: {e}") from None
    finally:
        csv.field_size_limit(limit)


def check_out_path(path):
    """Raise InputError naming `path` when it cannot be a new or replaced file: a folder, or a parent folder that is
    missing or a file. (A folder it may not write to shows when the file is opened, before any labeling.)"""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder; --out takes a CSV file name")
    if not os.path.isdir(parent):
        what = "is a file, not a folder" if os.path.exists(parent) else "does not exist"
        raise InputError(f"{path}: cannot write: {parent} {what}")


def write_labeled_csv(f, texts, values):
    """CheXpert-labeler output layout to the open file f: Reports, then one column per class; blank = not
    mentioned."""
    w = csv.writer(f)
    w.writerow(["Reports", *CLASSES])
    for t, row in zip(texts, values):
        w.writerow([t, *("" if v == NOT_MENTIONED else f"{v:.1f}" for v in row)])


def main(argv=None):
    parser = Parser(prog="python -m data.labels.report_labeler", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", required=True,
                        help="CSV with one report per row and no header (CheXpert labeler input)")
    parser.add_argument("--out", required=True,
                        help="output CSV: Reports, then the 22 classes (1, 0, -1, blank = not mentioned)")
    return run_main(parser.prog, parser.parse_args, label_file, argv)


def label_file(args):
    """The reports of --reports labelled into --out, and the speed printed."""
    check_out_path(args.out)
    texts = read_report_csv(args.reports)
    try:
        # written to a temporary file beside --out, renamed when complete; opened first, so that a folder it may
        # not write to stops the run before the labeling
        with atomic_path(args.out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            t = time.perf_counter()
            values = [label_report(x) for x in texts]
            dt = time.perf_counter() - t
            write_labeled_csv(f, texts, values)
    except OSError as e:
        raise EnvironmentFault(f"{args.out}: cannot write: {e.strerror or e}") from None
    print(f"labeled {len(texts)} reports in {dt:.2f} s ({len(texts) / max(dt, 1e-9):,.0f} reports/s) -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
