import six

from lane_filter import GAIN

print("lane_filter gain %s (six %s)" % (GAIN, six.__version__))
