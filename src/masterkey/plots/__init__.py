"""Figures (matplotlib) for every stage and the report: :mod:`~masterkey.plots.filters` (key sets, filter grids,
images), :mod:`~masterkey.plots.heatmaps`, :mod:`~masterkey.plots.curves` (training runs and experiments) and
:mod:`~masterkey.plots.bars` (cos² per key, swap accuracy and sensitivity), on the common style of
:mod:`~masterkey.plots.style`. Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no
global state, no backend switch: safe in notebooks and servers); :func:`~masterkey.plots.style.figure_png` renders
one to PNG bytes with the Agg renderer.

Conventions that keep the figures legible side by side: filters are drawn with a diverging colour map centred at 0
(red positive, blue negative), each panel scaled to its own largest |value|; key ``i`` always has colour
``key_colors(K)[i]`` (titles, boxes, heat-map ticks); references (random keys) are grey.
"""
