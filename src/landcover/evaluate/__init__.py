"""Accuracy assessment of a classified raster against a reference raster or reference polygons.

:func:`evaluate` streams the prediction in strips of whole rows, brings the reference onto the prediction's
grid window by window (nearest neighbour for rasters, rasterization for polygons), excludes no data on either
side and counts the confusion matrix (rows = map, columns = reference). With ``sample`` it also draws a
stratified, equalized or simple random sample of pixels in the same pass and reports area-adjusted accuracy and
class areas with 95 % confidence intervals following Olofsson et al. (2014).

The module is called ``accuracy`` rather than ``evaluate`` so that ``landcover.evaluate`` stays the function:
importing a submodule named like a lazily exported function would replace that attribute of the package.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..areas import ClassTally, PixelAreas, as_class_values, check_classified, class_strips
from ..classes import ClassInfo, read_class_table
from ..errors import LandcoverError, arg, warn
from ..raster import Grid, check_output, open_raster
from .confusion import ConfusionCounter, confusion_metrics
from .reference import open_reference
from .report import CONVENTION, format_table, save_heatmap, write_json
from .sampling import (
    MIN_PER_STRATUM,
    STRATEGIES,
    BottomKSampler,
    OlofssonEstimates,
    allocate,
    olofsson_estimates,
)

__all__ = ["AccuracyReport", "AccuracyWarning", "OlofssonEstimates", "confusion_metrics", "evaluate",
           "olofsson_estimates"]

#: Above this share of labelled reference pixels without a map class, :func:`evaluate` warns.
UNMAPPED_WARN_SHARE = 0.01


class AccuracyWarning(UserWarning):
    """Something the accuracy report says that the user should see (``landcover evaluate`` prints these)."""


#: Share of the map's classified pixels labelled by the reference below which --sample's estimates are warned.
SAMPLE_COVERAGE_WARN = 0.95


def heatmap_path(report: str | os.PathLike) -> Path:
    """Where the confusion-matrix heatmap of a JSON report goes: ``<stem>_confusion.png`` beside it."""
    report = Path(report)
    return report.with_name(f"{report.stem}_confusion.png")


@dataclass
class AccuracyReport:
    """Result of :func:`evaluate`. ``matrix`` rows are map (prediction) classes, columns reference classes."""

    prediction: str
    reference: str
    reference_kind: str
    class_field: str | None
    classes: list[ClassInfo]
    matrix: np.ndarray
    overall_accuracy: float
    kappa: float
    mean_iou: float
    per_class: list[dict]
    pixels_compared: int
    prediction_pixels_without_reference: int
    #: Labelled reference pixels (inside the prediction's grid) where the map has no class (0 or its nodata):
    #: left out of the confusion matrix, like every pixel without a class on both sides.
    reference_pixels_without_prediction: int
    missing_from_prediction: list[int]
    missing_from_reference: list[int]
    ignored_reference_values: list[int] = field(default_factory=list)
    sample: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def reference_pixels_without_prediction_share(self) -> float:
        """Share of the labelled reference pixels (in the prediction's grid) that have no map class."""
        labelled = self.pixels_compared + self.reference_pixels_without_prediction
        return self.reference_pixels_without_prediction / labelled if labelled else 0.0

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict (NaN metrics become null when written)."""
        return {
            "prediction": self.prediction,
            "reference": self.reference,
            "reference_kind": self.reference_kind,
            "class_field": self.class_field,
            "ignored_reference_values": self.ignored_reference_values,
            "convention": CONVENTION,
            "classes": [{"value": c.value, "name": c.name} for c in self.classes],
            "confusion_matrix": self.matrix,
            "pixels_compared": self.pixels_compared,
            "prediction_pixels_without_reference": self.prediction_pixels_without_reference,
            "reference_pixels_without_prediction": self.reference_pixels_without_prediction,
            "reference_pixels_without_prediction_share": self.reference_pixels_without_prediction_share,
            "reference_pixels_without_prediction_means": "labelled reference pixels inside the prediction's grid "
            "where the map is 0 or its nodata; left out of the confusion matrix and the accuracy",
            "overall_accuracy": self.overall_accuracy,
            "kappa": self.kappa,
            "mean_iou": self.mean_iou,
            "mean_iou_over": "classes present in the map or the reference",
            "per_class": self.per_class,
            "reference_classes_missing_from_prediction": self.missing_from_prediction,
            "prediction_classes_missing_from_reference": self.missing_from_reference,
            "sample": self.sample,
            "warnings": self.warnings,
        }

    def format_table(self) -> str:
        """The report as a readable fixed-width table."""
        return format_table(self.to_dict())

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the JSON report and, beside it, ``<stem>_confusion.png``; returns both paths."""
        path = Path(path)
        doc = self.to_dict()
        return write_json(doc, path), save_heatmap(doc, heatmap_path(path))


def evaluate(prediction: str | os.PathLike, reference: str | os.PathLike, class_field: str | None = None,
             out: str | os.PathLike | None = None, sample: int | None = None, strategy: str = "stratified",
             seed: int = 0, ignore_values: list[int] | None = None) -> AccuracyReport:
    """Compare a classified raster with a reference raster or reference polygons.

    Args:
        prediction: single-band classified raster (class values; 0 or its nodata = no data).
        reference: a raster (any grid and CRS; resampled with nearest neighbour onto the prediction's grid) or a
            vector file (.gpkg, .shp, .geojson, ...) of polygons, reprojected and rasterized per window.
        class_field: the polygons' class field (integer values, or class names of the prediction's class table);
            default: the first of classvalue, class_value, value, gridcode, classcode, class_id, class.
        out: JSON report path; a confusion-matrix heatmap ``<stem>_confusion.png`` is written beside it.
        sample: draw this many pixels from the map strata and add Olofsson et al. (2014) estimates.
        strategy: ``stratified`` (proportional to map class area, at least min(50, sample // classes) per class),
            ``equalized`` (the same number per class) or ``random`` (simple random over all pixels).
        seed: random seed of the sample.
        ignore_values: reference values that mean "not labelled" besides 0 and nodata (e.g. 255 for "ignore").

    Pixels are compared where both sides have data; the sample is drawn from the same pixels, and its estimates
    weight each map class by its area over the whole map. Labelled reference pixels where the map has no class (0 or its nodata) are
    left out of the matrix but counted in ``reference_pixels_without_prediction`` (with a warning above 1 %).
    Reference classes the prediction never contains are reported in ``missing_from_prediction`` (and as a
    warning), not an error. Warnings are :class:`AccuracyWarning` and are also listed in the report.
    """
    ignored = _checked_arguments(sample, strategy, ignore_values)
    pred_path, ref_path = str(prediction), str(reference)
    if out is not None:
        out = check_output(out, (".json",), "report", [prediction, reference])
        check_output(heatmap_path(out), (".png",), "confusion heatmap", [prediction, reference])
    with open_raster(pred_path, "prediction raster") as ds:
        check_classified(ds, pred_path, "prediction raster")
        grid, nodata = Grid.of(ds), ds.nodata
        if sample is not None and int(sample) > grid.width * grid.height:
            raise LandcoverError(f"{arg('sample', sample)}: larger than the {grid.width * grid.height:,} pixels of "
                                 f"{pred_path}; use a smaller sample")
        pred_classes = read_class_table(pred_path)
        ref = open_reference(ref_path, grid, class_field, pred_classes)
        try:
            counter, sampler, strata, unassessed, unmapped, areas = _stream(ds, grid, ref, sample, strategy,
                                                                             seed, pred_path, ignored)
        finally:
            ref.close()
    values, matrix = counter.matrix()
    _check_compared(counter.total, unmapped, nodata, pred_path, ref_path)
    _check_shared_values(values, matrix, pred_path, ref_path, ref.class_field)
    classes = _class_list(values, pred_classes, ref.classes)
    m = confusion_metrics(matrix)
    missing_pred = [v for i, v in enumerate(values) if m["reference_totals"][i] > 0 and m["map_totals"][i] == 0]
    missing_ref = [v for i, v in enumerate(values) if m["map_totals"][i] > 0 and m["reference_totals"][i] == 0]
    notes = _report_notes(unmapped, counter.total + unmapped, nodata, pred_classes, ref.classes, missing_pred)
    report = AccuracyReport(
        prediction=pred_path, reference=ref_path, reference_kind=ref.kind, class_field=ref.class_field,
        classes=classes, matrix=matrix, overall_accuracy=m["overall_accuracy"], kappa=m["kappa"],
        mean_iou=m["mean_iou"], per_class=_per_class(classes, m), pixels_compared=counter.total,
        prediction_pixels_without_reference=unassessed, reference_pixels_without_prediction=unmapped,
        missing_from_prediction=missing_pred,
        missing_from_reference=missing_ref, ignored_reference_values=ignored, warnings=notes,
    )
    if sample is not None:
        # _sample_section appends its notes to the same list, so they reach report.warnings too.
        report.sample = _sample_section(int(sample), strategy, seed, sampler, values, classes, matrix, strata,
                                        areas, grid, notes)
    for note in notes:
        warn(note, AccuracyWarning)
    if out is not None:
        report.save(out)
    return report


def _checked_arguments(sample: int | None, strategy: str, ignore_values: list[int] | None) -> list[int]:
    """Refuse an unknown strategy or a sample below 1 (when sampling); the ignored values, sorted and unique."""
    if sample is not None:
        if strategy not in STRATEGIES:
            raise LandcoverError(f"{arg('strategy', strategy)}: use one of {', '.join(STRATEGIES)}")
        if int(sample) < 1:
            raise LandcoverError(f"{arg('sample', sample)}: the sample size must be at least 1")
    try:
        return sorted({int(v) for v in ignore_values or []})
    except (TypeError, ValueError):
        raise LandcoverError(f"{arg('ignore_values', ignore_values)}: give whole numbers") from None


def _check_compared(compared: int, unmapped: int, nodata, pred_path: str, ref_path: str) -> None:
    """Refuse a comparison without a single pixel that has a class on both sides, saying which side lacks it."""
    if compared:
        return
    if unmapped:
        raise LandcoverError(f"{pred_path}: the prediction has no class ({_map_no_data(nodata)}) "
                             f"at any of the {unmapped:,} labelled pixels of {ref_path}; check the prediction's "
                             "nodata and that it covers the reference")
    raise LandcoverError(f"{pred_path} and {ref_path}: no pixel has a class in both after excluding no data; "
                         "check the nodata values and that the rasters cover the same area")


def _per_class(classes: list[ClassInfo], m: dict) -> list[dict]:
    """The report's per-class rows: pixel totals and the per-class metrics of :func:`confusion_metrics`."""
    return [
        {"value": c.value, "name": c.name, "map_pixels": int(m["map_totals"][i]),
         "reference_pixels": int(m["reference_totals"][i]), "correct": int(m["correct"][i]),
         **{k: float(m[k][i]) for k in ("users_accuracy", "producers_accuracy", "precision", "recall", "f1", "iou")}}
        for i, c in enumerate(classes)
    ]


def _report_notes(unmapped: int, labelled: int, nodata, pred_classes: list[ClassInfo], ref_classes: list[ClassInfo],
                  missing_pred: list[int]) -> list[str]:
    """Warnings about the comparison: many unmapped reference pixels, renamed classes, classes the map lacks."""
    notes = []
    if unmapped > UNMAPPED_WARN_SHARE * labelled:
        notes.append(f"{unmapped:,} of {labelled:,} labelled reference pixels ({100 * unmapped / labelled:.1f} %) "
                     f"have no class in the prediction ({_map_no_data(nodata)}) and are left out of the "
                     "confusion matrix and the accuracy; see reference_pixels_without_prediction")
    renamed = _renamed_classes(pred_classes, ref_classes)
    if renamed:
        notes.append(f"map and reference name some class values differently ({renamed}); classes are compared by "
                     "value, so check that both use the same codes")
    if missing_pred:
        # A negative value is rarely a class: label rasters often use -1 for "not labelled".
        negative = [v for v in missing_pred if v < 0]
        hint = f"; if {_listed(negative)} means not labelled, give {arg('ignore_values', negative)}" if negative else ""
        notes.append(f"reference classes missing from the prediction: {', '.join(map(str, missing_pred))} "
                     f"(their producer's accuracy and IoU are 0{hint})")
    return notes


def _check_shared_values(values, matrix, pred_path: str, ref_path: str, class_field: str | None) -> None:
    """Refuse a reference whose class values are none of the map's: every pixel would be wrong, and an overall
    accuracy of 0 would hide a coding mismatch (another legend, values times 10, a wrong field)."""
    mapped = {v for v, n in zip(values, matrix.sum(axis=1), strict=True) if n}
    labelled = {v for v, n in zip(values, matrix.sum(axis=0), strict=True) if n}
    if not mapped & labelled:
        field = f" (field {class_field!r}; choose another with {arg('class_field')})" if class_field else ""
        raise LandcoverError(f"{ref_path}: none of the reference's class values ({_listed(labelled)}){field} is a "
                             f"class of {pred_path} ({_listed(mapped)}); recode the reference to the map's values")


def _listed(values, most: int = 8) -> str:
    values = sorted(values)
    return ", ".join(map(str, values[:most])) + (", ..." if len(values) > most else "")


def _renamed_classes(pred: list[ClassInfo], ref: list[ClassInfo]) -> str:
    """``"2: Tree Canopy / Water, ..."`` for values both class tables name, differently."""
    theirs = {c.value: c.name for c in ref}
    differ = [(c.value, c.name, theirs[c.value]) for c in pred
              if c.value in theirs and c.name.strip().casefold() != theirs[c.value].strip().casefold()]
    return ", ".join(f"{v}: {a} / {b}" for v, a, b in differ)


def _map_no_data(nodata) -> str:
    """How the prediction marks no data, for messages: 0 always, and its nodata value when that is another."""
    if nodata is None or nodata == 0:
        return "map value 0 = no data"
    if isinstance(nodata, float) and math.isnan(nodata):
        return "map value 0 or NaN = no data"
    return f"map value 0 or its nodata {nodata:g}"


def _stream(ds, grid: Grid, ref, sample, strategy, seed, path: str, ignored: list[int]):
    """One pass over the prediction: confusion counts, the sample reservoirs, the strata (each map class's
    pixels and m² over the whole map) and the pixels with a class on one side only (map without reference,
    labelled reference without map)."""
    counter = ConfusionCounter()
    sampler = BottomKSampler(int(sample), seed, by_stratum=strategy != "random") if sample is not None else None
    areas = PixelAreas(grid, ds.name) if sample is not None and grid.crs is not None else None
    strata = ClassTally(areas)
    unassessed = unmapped = 0
    for win, data, pvalid in class_strips(ds, path):  # grid is the prediction's own
        rvals, rvalid = ref.read(win)
        if ignored:
            rvalid &= ~np.isin(rvals, ignored)
        both = pvalid & rvalid
        unassessed += int(np.count_nonzero(pvalid & ~rvalid))
        unmapped += int(np.count_nonzero(rvalid & ~pvalid))
        whole = as_class_values(data[pvalid])  # the map's classes, once per strip
        mapped, truth = whole[rvalid[pvalid]], rvals[both]
        counter.add(mapped, truth)
        if sampler is not None:
            sampler.offer(np.flatnonzero(both) + int(win.row_off) * grid.width, mapped, truth)
            # Strata are the map classes over the whole map, labelled by the reference or not (Olofsson et al.
            # weight each stratum by its mapped area).
            strata.add(win, whole, pvalid)
    return counter, sampler, strata, unassessed, unmapped, areas


def _class_list(values: list[int], *tables: list[ClassInfo]) -> list[ClassInfo]:
    """Names and colours from the prediction's class table, then the reference's, else generated."""
    from ..classes import generated_color

    known: dict[int, ClassInfo] = {}
    for table in reversed(tables):
        known.update({c.value: c for c in table})
    return [known.get(v, ClassInfo(v, str(v), generated_color(v))) for v in values]


def _thin_hint(strategy: str, strata: int, pixels: list[int]) -> str:
    """What helps the strata that got fewer than 2 sample units, given the strategy in use and their sizes."""
    if all(n < 2 for n in pixels):
        return "they have fewer than 2 pixels in the assessed area, so no sample can give them 2 units"
    if strategy == "random":
        return (f"use a larger sample or the stratified or equalized strategy (which give every map class at least "
                f"2 units from {arg('sample', 2 * strata)})")
    # stratified and equalized already give every stratum an equal floor: only the sample size helps
    return f"use a sample of at least {2 * strata} (2 units for each of the {strata} map classes)"


def _sample_section(size, strategy, seed, sampler: BottomKSampler, values, classes, matrix, strata: ClassTally,
                    areas: PixelAreas | None, grid: Grid, notes: list[str]) -> dict:
    """The report's ``sample`` section: draw the units, estimate with Olofsson et al.; appends its warnings."""
    # Units are drawn among the pixels the reference labels; the strata are the map classes over the whole map.
    labelled = {v: int(n) for v, n in zip(values, matrix.sum(axis=1), strict=True) if n > 0}
    mapped = strata.pixels
    allocation = allocate(strategy, size, labelled, {v: mapped.get(v, 0) for v in labelled})
    units = sampler.draw(allocation)
    counts = _sample_counts(values, units)
    pixels, sizes, unit = _strata_sizes(values, mapped, strata, areas)
    est = olofsson_estimates(counts, sizes)
    n_i = counts.sum(axis=1)
    notes.extend(_sample_notes(strategy, values, sizes, n_i, labelled, mapped))
    rows, cols = np.divmod(units["pixel"], grid.width)
    return {
        "size": size, "strategy": strategy, "seed": seed,
        "min_per_stratum": min(MIN_PER_STRATUM, size // max(1, len(labelled))) if strategy == "stratified"
        else None,
        "frame": "units drawn among pixels with a class in both the prediction and the reference; strata are the "
                 "map classes over the whole prediction",
        "labelled_pixels": np.array([labelled.get(v, 0) for v in values]),
        "area_unit": unit,
        "strata_pixels": pixels,
        "strata_area": sizes,
        "counts": counts,
        "counts_convention": "rows = map class (stratum), columns = reference class",
        "estimates": _sample_estimates(classes, n_i, est),
        "units": [[int(r), int(c), int(m), int(t)] for r, c, m, t in zip(rows, cols, units["map"], units["ref"],
                                                                         strict=True)],
        "units_columns": ["row", "col", "map", "reference"],
    }


def _sample_counts(values: list[int], units: np.ndarray) -> np.ndarray:
    """The sample's error matrix: ``units`` (structured array) per (map class, reference class) in ``values`` order."""
    index = {v: i for i, v in enumerate(values)}
    k = len(values)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, ([index[int(v)] for v in units["map"]], [index[int(v)] for v in units["ref"]]), 1)
    return counts


def _strata_sizes(values: list[int], mapped: dict[int, int], strata: ClassTally,
                  areas: PixelAreas | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(pixels, sizes, unit) of each map class: sizes in hectares when the CRS gives areas, else in pixels."""
    # Hectares come from geodesic sums for geographic and Mercator CRSs.
    pixels = np.array([mapped.get(v, 0) for v in values], dtype=float)
    if areas is None:
        return pixels, pixels, "pixels"
    area = strata.area()
    return pixels, np.array([area.get(v, 0.0) * areas.to_m2 / 1e4 for v in values]), "ha"


def _sample_notes(strategy: str, values: list[int], sizes: np.ndarray, n_i: np.ndarray, labelled: dict[int, int],
                  mapped: dict[int, int]) -> list[str]:
    """Warnings about the sample: thin strata, map classes it cannot reach, a reference that labels little."""
    notes = []
    thin = [v for v, s, n in zip(values, sizes, n_i, strict=True) if s > 0 and n < 2]
    if thin:
        hint = _thin_hint(strategy, len(labelled), [labelled.get(v, 0) for v in thin])
        notes.append(f"map classes with fewer than 2 sample units ({', '.join(map(str, thin))}): their sampling "
                     f"variance is not estimated; {hint}")
    unlabelled = sorted(v for v in mapped if v not in labelled)
    if unlabelled:
        notes.append(f"map classes without any pixel the reference labels ({', '.join(map(str, unlabelled))}, "
                     f"{sum(mapped[v] for v in unlabelled):,} pixels) cannot be sampled and are left out of the "
                     "estimates")
    coverage = sum(labelled.values()) / max(1, sum(mapped.values()))
    if coverage < SAMPLE_COVERAGE_WARN:
        notes.append(f"the reference labels {100 * coverage:.1f} % of the map's classified pixels: the sample is "
                     "drawn among those, and the estimates weight each map class by its area over the whole map, "
                     "which holds if the labelled pixels of each class represent that class")
    return notes


def _sample_estimates(classes: list[ClassInfo], n_i: np.ndarray, est: OlofssonEstimates) -> dict:
    """The ``estimates`` part of the sample section: per-class areas and accuracies with 95 % intervals."""
    return {
        "classes": [
            {"value": c.value, "name": c.name, "sample_units": int(n_i[i]), "map_area": float(est.map_area[i]),
             "area": float(est.area[i]), "area_se": float(est.area_se[i]),
             "area_ci95": float(est.area_ci95[i]),
             "users_accuracy": float(est.users_accuracy[i]), "users_ci95": float(est.users_ci95[i]),
             "producers_accuracy": float(est.producers_accuracy[i]),
             "producers_ci95": float(est.producers_ci95[i])}
            for i, c in enumerate(classes)
        ],
        "overall_accuracy": est.overall_accuracy,
        "overall_ci95": est.overall_ci95,
        "error_matrix_proportions": est.proportions,
    }
