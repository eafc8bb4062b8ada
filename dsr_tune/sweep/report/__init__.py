"""The report of a sweep or comparison: :mod:`.gather` its runs (MLflow, else the
run folders), :mod:`.stats` their table, :mod:`.costs` what each row cost,
:mod:`.render` it (text, Markdown, CSV; :mod:`.figure`: the figure), and
:mod:`.dynamics`: how the dynamic methods moved their budget."""
