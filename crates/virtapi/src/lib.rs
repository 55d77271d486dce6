//! virt-api subresources.
