"""The run folder: the append-only writer (store), the reader (pandas frames), the HTML
report and the plots."""
