"""App Engine's ``google.appengine.ext`` libraries for kiln apps (``kiln.ext.db``)."""
