"""Placeholder module replaced by the export helper."""
def register(sub):
    sub.add_parser("export", help="export training chips (Classified Tiles)")
