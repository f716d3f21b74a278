"""One module per dashboard section, each with a `router`; ALL is what hone.web.app serves."""

from hone.web.pages import audit, datasets, evaluations, jobs, monitoring, playground, registry, review

ALL = (datasets, jobs, evaluations, registry, monitoring, playground, review, audit)
