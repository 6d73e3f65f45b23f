//! rbddiff
