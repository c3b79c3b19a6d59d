"""Label shapes: one class per row, label sets (multi-label) and numbers (regression).

``args.LabelArguments`` are the flags every recipe shares; ``target.Target`` is what a run learned about its labels
(problem type, names, target scaling, thresholds) and saves with every output; ``columns`` reads the label formats
of any ``datasets`` split; ``scores`` holds the metrics; ``thresholds`` and ``scaling`` the label-set thresholds and
the regression head folding; ``reports`` the per-label tables and plots.
"""
