//! Simple multi-panel figures (lines, points, bars, arrows, heat maps with contour lines) saved as
//! PNG and SVG with plotters, and the helpers the figures share (histogram, palette).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::files::{temp_path, write_atomic};

/// A colour map for heat maps.
#[derive(Clone, Copy, Debug)]
pub enum ColorMap {
    /// Perceptually ordered dark-blue → yellow (viridis-like), over [min, max].
    Viridis,
    /// Blue (negative) – white (0) – red (positive), symmetric around 0 over [−m, m].
    Diverging,
}

impl ColorMap {
    /// The colour of `v` on [lo, hi].
    pub fn color(self, v: f64, lo: f64, hi: f64) -> RGBColor {
        match self {
            ColorMap::Viridis => {
                const STOPS: [(u8, u8, u8); 5] = [
                    (68, 1, 84),
                    (59, 82, 139),
                    (33, 145, 140),
                    (94, 201, 98),
                    (253, 231, 37),
                ];
                let t = if hi > lo {
                    ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
                } else {
                    0.5
                };
                lerp_stops(&STOPS, t)
            }
            ColorMap::Diverging => {
                const STOPS: [(u8, u8, u8); 3] = [(33, 102, 172), (247, 247, 247), (178, 24, 43)];
                let m = lo.abs().max(hi.abs()).max(1e-300);
                lerp_stops(&STOPS, (0.5 + 0.5 * v / m).clamp(0.0, 1.0))
            }
        }
    }
}

fn lerp_stops(stops: &[(u8, u8, u8)], t: f64) -> RGBColor {
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let c = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (stops[i], stops[i + 1]);
    RGBColor(c(a.0, b.0), c(a.1, b.1), c(a.2, b.2))
}

/// Values on a regular grid: `values[j * nx + i]` at (x_i, y_j), x and y linspace over the ranges.
#[derive(Clone, Debug)]
pub struct Field {
    /// Samples along x.
    pub nx: usize,
    /// Samples along y.
    pub ny: usize,
    /// x range.
    pub x: (f64, f64),
    /// y range.
    pub y: (f64, f64),
    /// Row-major (y outer) values.
    pub values: Vec<f64>,
}

impl Field {
    /// Samples `f` on an nx×ny grid.
    pub fn sample(
        nx: usize,
        ny: usize,
        x: (f64, f64),
        y: (f64, f64),
        f: impl Fn(f64, f64) -> f64,
    ) -> Self {
        let mut values = Vec::with_capacity(nx * ny);
        for j in 0..ny {
            for i in 0..nx {
                values.push(f(Self::at(x, nx, i), Self::at(y, ny, j)));
            }
        }
        Self {
            nx,
            ny,
            x,
            y,
            values,
        }
    }

    fn at(r: (f64, f64), n: usize, i: usize) -> f64 {
        if n < 2 {
            r.0
        } else {
            r.0 + (r.1 - r.0) * i as f64 / (n - 1) as f64
        }
    }

    fn value(&self, i: usize, j: usize) -> f64 {
        self.values[j * self.nx + i]
    }

    /// Iso-line segments at `level` (marching squares).
    pub fn contour(&self, level: f64) -> Vec<[(f64, f64); 2]> {
        let mut segs = vec![];
        for j in 0..self.ny.saturating_sub(1) {
            for i in 0..self.nx.saturating_sub(1) {
                let corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)];
                let mut cross = vec![];
                for k in 0..4 {
                    let (a, b) = (corners[k], corners[(k + 1) % 4]);
                    let (va, vb) = (self.value(a.0, a.1) - level, self.value(b.0, b.1) - level);
                    if (va < 0.0) != (vb < 0.0) {
                        let t = va / (va - vb);
                        let pa = (
                            Self::at(self.x, self.nx, a.0),
                            Self::at(self.y, self.ny, a.1),
                        );
                        let pb = (
                            Self::at(self.x, self.nx, b.0),
                            Self::at(self.y, self.ny, b.1),
                        );
                        cross.push((pa.0 + t * (pb.0 - pa.0), pa.1 + t * (pb.1 - pa.1)));
                    }
                }
                if cross.len() == 2 {
                    segs.push([cross[0], cross[1]]);
                } else if cross.len() == 4 {
                    segs.push([cross[0], cross[1]]);
                    segs.push([cross[2], cross[3]]);
                }
            }
        }
        segs
    }
}

/// A heat map drawn under a panel, with optional contour lines.
#[derive(Clone, Debug)]
pub struct Heatmap {
    /// The values.
    pub field: Field,
    /// Colour map.
    pub colormap: ColorMap,
    /// Colour range (min, max).
    pub range: (f64, f64),
    /// Contour levels drawn as thin grey lines.
    pub contours: Vec<f64>,
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Style {
    /// A polyline.
    Line,
    /// Filled circles of this radius (pixels).
    Points(u32),
    /// A polyline with filled circles.
    LinePoints(u32),
    /// Vertical bars of this width (data units), from y = 0.
    Bars(f64),
    /// A filled square marker of this half-size (pixels).
    Squares(u32),
}

/// A data series.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label (none: not in the legend).
    pub label: Option<String>,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: RGBColor,
    /// Style.
    pub style: Style,
    /// Line width in pixels.
    pub width: u32,
}

impl Series {
    /// A series with a label.
    pub fn new(
        label: impl Into<String>,
        points: Vec<(f64, f64)>,
        color: RGBColor,
        style: Style,
    ) -> Self {
        Self {
            label: Some(label.into()),
            points,
            color,
            style,
            width: 2,
        }
    }

    /// A series without a legend entry.
    pub fn unlabelled(points: Vec<(f64, f64)>, color: RGBColor, style: Style) -> Self {
        Self {
            label: None,
            points,
            color,
            style,
            width: 1,
        }
    }
}

/// An arrow from `from` to `to` (data units).
#[derive(Clone, Copy, Debug)]
pub struct Arrow {
    /// Tail.
    pub from: (f64, f64),
    /// Head.
    pub to: (f64, f64),
    /// Colour.
    pub color: RGBColor,
}

/// One panel of a figure.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Caption above the panel.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// x range.
    pub x: (f64, f64),
    /// y range.
    pub y: (f64, f64),
    /// Background heat map.
    pub heatmap: Option<Heatmap>,
    /// Data series, drawn in order.
    pub series: Vec<Series>,
    /// Arrows.
    pub arrows: Vec<Arrow>,
    /// Closed outlines (polygons) drawn in black, e.g. a reference square.
    pub outlines: Vec<Vec<(f64, f64)>>,
    /// Legend position (None: no legend).
    pub legend: Option<SeriesLabelPosition>,
    /// Label the x axis with whole numbers only (e.g. epochs).
    pub integer_x: bool,
}

impl Panel {
    /// An empty panel.
    pub fn new(
        title: impl Into<String>,
        x_label: &str,
        y_label: &str,
        x: (f64, f64),
        y: (f64, f64),
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x,
            y,
            heatmap: None,
            series: vec![],
            arrows: vec![],
            outlines: vec![],
            legend: Some(SeriesLabelPosition::UpperRight),
            integer_x: false,
        }
    }
}

/// A figure: panels on a grid of `cols` columns, each `panel_size` pixels.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Figure title (top line).
    pub title: String,
    /// Panels, row-major.
    pub panels: Vec<Panel>,
    /// Columns of the panel grid.
    pub cols: usize,
    /// Size of each panel in pixels.
    pub panel_size: (u32, u32),
}

impl Figure {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.cols.max(1)).max(1) as u32;
        (
            self.panel_size.0 * self.cols as u32,
            self.panel_size.1 * rows + 40,
        )
    }

    /// Saves `stem.png` and `stem.svg` (each atomically: a figure that cannot be written leaves
    /// no partial file, and the error names it) and returns both paths.
    pub fn save(&self, stem: &Path) -> Result<Vec<PathBuf>> {
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        // The bitmap backend chooses the format by the extension, so the temporary name ends in .png.
        let tmp = PathBuf::from(format!("{}.png", temp_path(&png).display()));
        let written = (|| -> Result<()> {
            {
                let root = BitMapBackend::new(&tmp, self.size()).into_drawing_area();
                self.draw(&root)?;
                root.present().map_err(|e| anyhow!("{e}"))?;
            }
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &png)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.with_context(|| format!("writing {}", png.display()))?;
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, self.size()).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("{e:?}"))?;
        }
        write_atomic(&svg, text.as_bytes())?;
        Ok(vec![png, svg])
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {e:?}");
        root.fill(&WHITE).map_err(err)?;
        let (body_area, _) = (
            root.titled(&self.title, ("sans-serif", 24)).map_err(err)?,
            (),
        );
        let rows = self.panels.len().div_ceil(self.cols.max(1)).max(1);
        let areas = body_area.split_evenly((rows, self.cols.max(1)));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            draw_panel(panel, area).map_err(|e| anyhow!("plotting `{}`: {e}", panel.title))?;
        }
        Ok(())
    }
}

fn draw_panel<DB: DrawingBackend>(p: &Panel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(38)
        .y_label_area_size(52)
        .build_cartesian_2d(p.x.0..p.x.1, p.y.0..p.y.1)
        .map_err(err)?;
    if let Some(h) = &p.heatmap {
        let f = &h.field;
        let dx = (f.x.1 - f.x.0) / (f.nx.max(2) - 1) as f64;
        let dy = (f.y.1 - f.y.0) / (f.ny.max(2) - 1) as f64;
        chart
            .draw_series((0..f.ny).flat_map(|j| {
                (0..f.nx).map(move |i| {
                    let (cx, cy) = (f.x.0 + dx * i as f64, f.y.0 + dy * j as f64);
                    let c = h.colormap.color(f.value(i, j), h.range.0, h.range.1);
                    Rectangle::new(
                        [
                            (cx - dx / 2.0, cy - dy / 2.0),
                            (cx + dx / 2.0, cy + dy / 2.0),
                        ],
                        c.filled(),
                    )
                })
            }))
            .map_err(err)?;
        for &level in &h.contours {
            chart
                .draw_series(
                    f.contour(level).into_iter().map(|s| {
                        PathElement::new(s.to_vec(), RGBColor(90, 90, 90).stroke_width(1))
                    }),
                )
                .map_err(err)?;
        }
    }
    let integer_label = |x: &f64| match x.fract() == 0.0 {
        true => format!("{x:.0}"),
        false => String::new(),
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .x_labels(7)
        .y_labels(7);
    if p.integer_x {
        mesh.x_labels((p.x.1 - p.x.0).ceil() as usize + 1)
            .x_label_formatter(&integer_label);
    }
    mesh.draw().map_err(err)?;
    for o in &p.outlines {
        let mut pts = o.clone();
        if let Some(first) = o.first() {
            pts.push(*first);
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                pts,
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
    }
    let mut any_label = false;
    for s in &p.series {
        let color = s.color;
        let width = s.width;
        let anno = match s.style {
            Style::Line => chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(width)))
                .map_err(err)?,
            Style::Points(r) => chart
                .draw_series(s.points.iter().map(|&q| Circle::new(q, r, color.filled())))
                .map_err(err)?,
            Style::Squares(r) => chart
                .draw_series(s.points.iter().map(|&q| {
                    EmptyElement::at(q)
                        + Rectangle::new(
                            [(-(r as i32), -(r as i32)), (r as i32, r as i32)],
                            color.filled(),
                        )
                }))
                .map_err(err)?,
            Style::LinePoints(r) => {
                chart
                    .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(width)))
                    .map_err(err)?;
                chart
                    .draw_series(s.points.iter().map(|&q| Circle::new(q, r, color.filled())))
                    .map_err(err)?
            }
            Style::Bars(w) => chart
                .draw_series(s.points.iter().map(|&(x, y)| {
                    Rectangle::new(
                        [(x - w / 2.0, 0.0), (x + w / 2.0, y)],
                        color.mix(0.55).filled(),
                    )
                }))
                .map_err(err)?,
        };
        if let Some(label) = &s.label {
            any_label = true;
            let style = s.style;
            anno.label(label.as_str())
                .legend(move |(x, y)| match style {
                    Style::Line => {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                            .into_dyn()
                    }
                    Style::Bars(_) | Style::Squares(_) => {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()).into_dyn()
                    }
                    _ => Circle::new((x + 8, y), 4, color.filled()).into_dyn(),
                });
        }
    }
    for a in &p.arrows {
        chart.draw_series(arrow(a, p)).map_err(err)?;
    }
    if let (Some(pos), true) = (p.legend.clone(), any_label) {
        chart
            .configure_series_labels()
            .position(pos)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn arrow(a: &Arrow, p: &Panel) -> Vec<PathElement<(f64, f64)>> {
    // Head in data units, scaled so it looks the same on both axes.
    let (sx, sy) = (p.x.1 - p.x.0, p.y.1 - p.y.0);
    let (dx, dy) = ((a.to.0 - a.from.0) / sx, (a.to.1 - a.from.1) / sy);
    let len = dx.hypot(dy);
    let style = a.color.stroke_width(1);
    let mut out = vec![PathElement::new(vec![a.from, a.to], style)];
    if len > 0.0 {
        let head = 0.02_f64.min(0.5 * len);
        let (ux, uy) = (dx / len, dy / len);
        for sign in [1.0, -1.0] {
            let (c, s) = (0.5_f64.cos(), sign * 0.5_f64.sin());
            let (rx, ry) = (-(ux * c - uy * s), -(ux * s + uy * c));
            out.push(PathElement::new(
                vec![a.to, (a.to.0 + head * rx * sx, a.to.1 + head * ry * sy)],
                style,
            ));
        }
    }
    out
}

/// A histogram of `values` over [lo, hi] with `bins` bins, as bar centres and counts.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64)> {
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0.0; bins];
    for &v in values {
        if v.is_finite() && v >= lo && v <= hi {
            counts[(((v - lo) / w) as usize).min(bins - 1)] += 1.0;
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (lo + w * (i as f64 + 0.5), c))
        .collect()
}

/// A categorical palette (colour-blind friendly, Okabe–Ito plus extras).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
    RGBColor(127, 60, 141),
    RGBColor(102, 102, 102),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_that_cannot_be_written_leaves_nothing_and_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the PNG must go: the final rename fails.
        fs::create_dir(tmp.path().join("fig.png")).unwrap();
        let figure = Figure {
            title: "t".into(),
            panels: vec![Panel::new("p", "x", "y", (0.0, 1.0), (0.0, 1.0))],
            cols: 1,
            panel_size: (120, 100),
        };
        let err = figure.save(&tmp.path().join("fig")).unwrap_err();
        assert!(format!("{err:#}").contains("fig.png"), "{err:#}");
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("fig.png")]);
    }
}
