__version__ = "0.1.0"

import os as _os
_os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # albumentations otherwise checks for updates online at import
