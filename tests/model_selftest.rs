//! The model itself, on a hand-built diff.
mod common;
use common::model::Image;
use rbddiff::{DiffWriter, Extent, Metadata, Version};

#[test]
fn model_applies_resize_write_zero() {
    let meta = Metadata {
        to_snap: Some(b"a".to_vec()),
        image_size: Some(16),
        ..Default::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    w.write_data(2, b"abcd").unwrap();
    w.zero(Extent::new(3, 2)).unwrap_err(); // overlaps the write: refused
    w.zero(Extent::new(8, 2)).unwrap();
    let bytes = w.finish().unwrap();
    let mut img = Image {
        data: vec![7; 20],
        snap: None,
    };
    img.apply_bytes(&bytes);
    assert_eq!(
        img.data,
        [7, 7, b'a', b'b', b'c', b'd', 7, 7, 0, 0, 7, 7, 7, 7, 7, 7]
    );
    assert_eq!(img.snap.as_deref(), Some("a"));
}
